// 2-D convolution (forward, input gradient, weight gradient) through oneDNN, as XLA FFI handlers.
//
// XLA:CPU runs convolutions through Eigen, whose weight-gradient and 16/32-channel kernels are
// well below the CPU's fp32 rate; oneDNN's JIT kernels on channel-blocked layouts are fast for
// every Fast ResNet-34 layer (figures: bench/README.md).
//
// Layouts (row-major buffers as XLA passes them):
//   blocked activations  [N, C/b, H, W, b]    (oneDNN nChw16c for b = 16, the AVX-512 kernels;
//                                              nChw8c for b = 8, AVX2; for C = b it is NHWC);
//   plain input          [N, H, W, 1]         (single-channel input, e.g. a network's stem);
//   weights              [kh, kw, C_in, C_out] (HWIO, as in the JAX model).
// Attributes: stride (sh, sw) and zero padding (ph_lo, ph_hi, pw_lo, pw_hi).
//
// Primitives are built once per shape and cached. Scratchpads are user-managed and per thread,
// so a cached primitive may run on any of XLA's threads. oneDNN parallelises each call with
// OpenMP over all cores.
#include <oneapi/dnnl/dnnl.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace {

enum Kind { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

struct Geometry {
  int64_t n, ci, co, h, w, oh, ow, kh, kw, sh, sw, ph_lo, ph_hi, pw_lo, pw_hi;
  bool plain_src;  // [N, H, W, 1] input instead of blocked
  int64_t block;   // channel block: 16 or 8
  auto key(int kind) const {
    return std::make_tuple(kind, n, ci, co, h, w, kh, kw, sh, sw, ph_lo, ph_hi, pw_lo, pw_hi,
                           plain_src, block);
  }
};

struct Entry {
  dnnl::primitive prim;
  memory::desc src, weights, dst;  // as the primitive wants them
  memory::desc user_weights;       // HWIO
  dnnl::reorder weights_reorder;   // HWIO -> primitive (fwd, bwd data); primitive -> HWIO (bwd w)
  size_t scratch_bytes = 0;
  std::string impl;                // oneDNN's implementation name, e.g. "jit:avx512_core"
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Grow-only, 64-byte-aligned per-thread buffer (slot 0: scratchpad, 1: weights).
void* ThreadBuffer(int slot, size_t bytes) {
  struct Buf {
    void* p = nullptr;
    size_t size = 0;
    ~Buf() { std::free(p); }
  };
  thread_local Buf bufs[2];
  Buf& b = bufs[slot];
  if (b.size < bytes) {
    std::free(b.p);
    b.size = (bytes + 63) / 64 * 64;
    b.p = std::aligned_alloc(64, b.size);
    if (b.p == nullptr) b.size = 0;
  }
  return b.p;
}

// The primitive built from `pd`, the layouts it wants (activations: x or dx, weights or their
// gradient, y or dy), its scratchpad size and implementation name.
template <class Primitive, class PrimitiveDesc>
void Fill(Entry* e, const PrimitiveDesc& pd, const memory::desc& src, const memory::desc& weights,
          const memory::desc& dst) {
  e->prim = Primitive(pd);
  e->src = src;
  e->weights = weights;
  e->dst = dst;
  e->scratch_bytes = pd.scratchpad_desc().get_size();
  e->impl = pd.impl_info_str();
}

Entry* GetEntry(int kind, const Geometry& g) {
  static std::mutex mu;
  static std::map<decltype(g.key(0)), std::unique_ptr<Entry>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(g.key(kind));
  if (it != cache.end()) return it->second.get();

  auto& eng = Engine();
  const tag blocked = g.block == 16 ? tag::nChw16c : tag::nChw8c;
  memory::desc src({g.n, g.ci, g.h, g.w}, memory::data_type::f32,
                   g.plain_src ? tag::nchw : blocked);
  memory::desc dst({g.n, g.co, g.oh, g.ow}, memory::data_type::f32, blocked);
  memory::desc wany({g.co, g.ci, g.kh, g.kw}, memory::data_type::f32, tag::any);
  memory::desc whwio({g.co, g.ci, g.kh, g.kw}, memory::data_type::f32, tag::hwio);
  memory::dims strides{g.sh, g.sw}, pad_l{g.ph_lo, g.pw_lo}, pad_r{g.ph_hi, g.pw_hi};
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::convolution_forward::primitive_desc fwd(
      eng, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src, wany,
      dst, strides, pad_l, pad_r, attr);
  auto e = std::make_unique<Entry>();
  e->user_weights = whwio;
  if (kind == kForward) {
    Fill<dnnl::convolution_forward>(e.get(), fwd, fwd.src_desc(), fwd.weights_desc(),
                                    fwd.dst_desc());
  } else if (kind == kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc pd(
        eng, dnnl::algorithm::convolution_direct, src, wany, dst, strides, pad_l, pad_r, fwd,
        attr);
    Fill<dnnl::convolution_backward_data>(e.get(), pd, pd.diff_src_desc(), pd.weights_desc(),
                                          pd.diff_dst_desc());
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd(
        eng, dnnl::algorithm::convolution_direct, src, wany, dst, strides, pad_l, pad_r, fwd,
        attr);
    Fill<dnnl::convolution_backward_weights>(e.get(), pd, pd.src_desc(),
                                             pd.diff_weights_desc(), pd.diff_dst_desc());
  }
  // Weights: HWIO -> the primitive's layout; for the weight gradient, the other way.
  e->weights_reorder = kind == kBackwardWeights
      ? dnnl::reorder(dnnl::reorder::primitive_desc(eng, e->weights, eng, whwio))
      : dnnl::reorder(dnnl::reorder::primitive_desc(eng, whwio, eng, e->weights));
  if (e->src != src || e->dst != dst)
    throw std::runtime_error("oneDNN chose other activation layouts than the blocked ones");
  Entry* out = e.get();
  cache.emplace(g.key(kind), std::move(e));
  return out;
}

// Geometry from the activation shapes ([N, C/b, H, W, b] or [N, H, W, 1]) and HWIO weights.
ffi::Error MakeGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                        ffi::Span<const int64_t> y, int64_t sh, int64_t sw, int64_t ph_lo,
                        int64_t ph_hi, int64_t pw_lo, int64_t pw_hi, Geometry* g) {
  if (w.size() != 4 || y.size() != 5 || (y[4] != 16 && y[4] != 8) ||
      (x.size() != 5 && x.size() != 4))
    return ffi::Error::InvalidArgument("onednn conv: expected blocked [N, C/b, H, W, b] "
                                       "activations (b 8 or 16), [N, H, W, 1] input and HWIO "
                                       "weights");
  g->block = y[4];
  g->plain_src = x.size() == 4;
  if (g->plain_src) {
    if (x[3] != 1) return ffi::Error::InvalidArgument("onednn conv: plain input needs C = 1");
    g->n = x[0], g->h = x[1], g->w = x[2], g->ci = 1;
  } else {
    if (x[4] != g->block)
      return ffi::Error::InvalidArgument("onednn conv: input and output blocks differ");
    g->n = x[0], g->ci = x[1] * g->block, g->h = x[2], g->w = x[3];
  }
  g->kh = w[0], g->kw = w[1], g->co = y[1] * g->block, g->oh = y[2], g->ow = y[3];
  g->sh = sh, g->sw = sw, g->ph_lo = ph_lo, g->ph_hi = ph_hi, g->pw_lo = pw_lo, g->pw_hi = pw_hi;
  if (w[2] != g->ci || w[3] != g->co || y[0] != g->n)
    return ffi::Error::InvalidArgument("onednn conv: weight / batch shapes do not match");
  if (g->oh != (g->h + ph_lo + ph_hi - g->kh) / sh + 1 ||
      g->ow != (g->w + pw_lo + pw_hi - g->kw) / sw + 1)
    return ffi::Error::InvalidArgument("onednn conv: output size does not match the geometry");
  return ffi::Error::Success();
}

// Runs kind's primitive: src / dst are the activation buffers (x or dx, y or dy), weights HWIO.
ffi::Error Run(int kind, const Geometry& g, void* src, void* weights, void* dst) {
  try {
    Entry* e = GetEntry(kind, g);
    auto& eng = Engine();
    thread_local dnnl::stream stream(eng);
    memory src_m(e->src, eng, src), dst_m(e->dst, eng, dst);
    memory user_w(e->user_weights, eng, weights);
    memory prim_w(e->weights, eng, ThreadBuffer(1, e->weights.get_size()));
    memory scratch(dnnl::memory::desc({static_cast<int64_t>(e->scratch_bytes)},
                                      memory::data_type::u8, tag::x),
                   eng, ThreadBuffer(0, e->scratch_bytes > 0 ? e->scratch_bytes : 64));
    if (kind == kForward) {
      e->weights_reorder.execute(stream, user_w, prim_w);
      e->prim.execute(stream, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_WEIGHTS, prim_w},
                               {DNNL_ARG_DST, dst_m}, {DNNL_ARG_SCRATCHPAD, scratch}});
    } else if (kind == kBackwardData) {
      e->weights_reorder.execute(stream, user_w, prim_w);
      e->prim.execute(stream, {{DNNL_ARG_DIFF_SRC, src_m}, {DNNL_ARG_WEIGHTS, prim_w},
                               {DNNL_ARG_DIFF_DST, dst_m}, {DNNL_ARG_SCRATCHPAD, scratch}});
    } else {
      e->prim.execute(stream, {{DNNL_ARG_SRC, src_m}, {DNNL_ARG_DIFF_WEIGHTS, prim_w},
                               {DNNL_ARG_DIFF_DST, dst_m}, {DNNL_ARG_SCRATCHPAD, scratch}});
      e->weights_reorder.execute(stream, prim_w, user_w);
    }
    stream.wait();
  } catch (const std::exception& ex) {
    return ffi::Error::Internal(std::string("onednn conv: ") + ex.what());
  }
  return ffi::Error::Success();
}

ffi::Error ConvForward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                       ffi::ResultBuffer<ffi::F32> y, int64_t sh, int64_t sw, int64_t ph_lo,
                       int64_t ph_hi, int64_t pw_lo, int64_t pw_hi) {
  Geometry g;
  auto err = MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, ph_lo, ph_hi,
                          pw_lo, pw_hi, &g);
  if (!err.success()) return err;
  return Run(kForward, g, x.untyped_data(), w.untyped_data(), y->untyped_data());
}

ffi::Error ConvBackwardData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w,
                            ffi::ResultBuffer<ffi::F32> dx, int64_t sh, int64_t sw,
                            int64_t ph_lo, int64_t ph_hi, int64_t pw_lo, int64_t pw_hi) {
  Geometry g;
  auto err = MakeGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw, ph_lo,
                          ph_hi, pw_lo, pw_hi, &g);
  if (!err.success()) return err;
  if (g.plain_src)
    return ffi::Error::InvalidArgument("onednn conv: no input gradient for plain input");
  return Run(kBackwardData, g, dx->untyped_data(), w.untyped_data(), dy.untyped_data());
}

ffi::Error ConvBackwardWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                               ffi::ResultBuffer<ffi::F32> dw, int64_t sh, int64_t sw,
                               int64_t ph_lo, int64_t ph_hi, int64_t pw_lo, int64_t pw_hi) {
  Geometry g;
  auto err = MakeGeometry(x.dimensions(), dw->dimensions(), dy.dimensions(), sh, sw, ph_lo,
                          ph_hi, pw_lo, pw_hi, &g);
  if (!err.success()) return err;
  return Run(kBackwardWeights, g, x.untyped_data(), dw->untyped_data(), dy.untyped_data());
}

}  // namespace

// Whether oneDNN has optimized (non-reference) kernels for channel blocks of `block` (16 or 8)
// on this CPU: 16-channel blocks need AVX-512, 8-channel blocks AVX2; elsewhere oneDNN would run
// its reference loops, far slower than XLA. `plain` = 1 probes the single-channel-input stem
// instead (forward and weight gradient). Writes the implementation names of the probed
// primitives to `out`. Returns 1 if all are fast.
extern "C" int SsvConvProbe(int block, int plain, char* out, int len) {
  const int64_t b = block;
  const Geometry blocked[] = {
      {2, b, b, 8, 8, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1, false, b},          // 3x3, one block
      {2, b, 2 * b, 8, 8, 4, 4, 3, 3, 2, 2, 1, 1, 1, 1, false, b},      // 3x3 stride 2
  };
  const Geometry stem[] = {{2, 1, 2 * b, 8, 8, 8, 4, 7, 7, 1, 2, 3, 3, 3, 3, true, b}};
  const auto& probes = plain ? std::vector<Geometry>(std::begin(stem), std::end(stem))
                             : std::vector<Geometry>(std::begin(blocked), std::end(blocked));
  std::string names;
  int fast = 1;
  try {
    for (const Geometry& g : probes) {
      for (int kind : {kForward, kBackwardData, kBackwardWeights}) {
        if (g.plain_src && kind == kBackwardData) continue;  // XLA computes that one
        const std::string& impl = GetEntry(kind, g)->impl;
        names += impl + " ";
        if (impl.rfind("ref", 0) == 0) fast = 0;
      }
    }
  } catch (const std::exception& ex) {
    names += ex.what();
    fast = 0;
  }
  std::snprintf(out, len, "%s", names.c_str());
  return fast;
}

#define SSV_CONV_ATTRS                                                              \
  .Attr<int64_t>("sh").Attr<int64_t>("sw").Attr<int64_t>("ph_lo").Attr<int64_t>( \
      "ph_hi").Attr<int64_t>("pw_lo").Attr<int64_t>("pw_hi")

XLA_FFI_DEFINE_HANDLER_SYMBOL(SsvConvForward, ConvForward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() SSV_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SsvConvBackwardData, ConvBackwardData,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() SSV_CONV_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SsvConvBackwardWeights, ConvBackwardWeights,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>() SSV_CONV_ATTRS);
