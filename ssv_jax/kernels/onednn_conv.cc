// 2-D convolution (forward, input gradient, weight gradient) through oneDNN, as XLA FFI handlers.
//
// XLA:CPU runs convolutions through Eigen, whose weight-gradient and 16/32-channel kernels are
// well below the CPU's fp32 rate; oneDNN's JIT kernels on channel-blocked layouts are fast for
// every Fast ResNet-34 layer (figures: bench/README.md).
//
// Layouts (row-major buffers as XLA passes them):
//   blocked activations  [N, C/b, H, W, b]    (float32: oneDNN nChw16c for b = 16, the AVX-512
//                                              kernels; nChw8c for b = 8, AVX2; for C = b it is
//                                              NHWC);
//   plain input          [N, H, W, 1]         (float32 single-channel input, e.g. a network's
//                                              stem, with a blocked output);
//   NHWC activations     [N, H, W, C]         (bfloat16: input and output both 4-D; the layout
//                                              oneDNN's AMX / AVX-512 BF16 kernels (brgconv) take;
//                                              its bf16 kernels on nChw16c are slower than f32);
//   weights              [kh, kw, C_in, C_out] (HWIO, as in the JAX model), float32 or bfloat16.
// Attributes: stride (sh, sw) and zero padding (ph_lo, ph_hi, pw_lo, pw_hi).
//
// Data types: activations (x, y and their gradients) float32 or bfloat16, all the same; the
// weights and their gradient float32 or bfloat16, independently (mixed precision: bf16
// activations, f32 parameters). The primitive computes with weights in the activation type (the
// weights reorder converts) and accumulates in f32; the weight gradient is always produced in
// f32 (summed over the batch in f32) and converted to the caller's weight type by its reorder.
//
// Primitives are built once per shape and cached. Scratchpads are user-managed and per thread,
// so a cached primitive may run on any of XLA's threads. oneDNN parallelises each call with
// OpenMP over all cores.
#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace {

enum Kind { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };
using dt = memory::data_type;

struct Geometry {
  int64_t n, ci, co, h, w, oh, ow, kh, kw, sh, sw, ph_lo, ph_hi, pw_lo, pw_hi;
  bool plain_src;     // 4-D input: [N, H, W, 1] with a blocked output, or NHWC (block 0)
  int64_t block;      // channel block of blocked activations: 16 or 8; 0: NHWC activations
  dt act = dt::f32;   // activations (and their gradients)
  dt wei = dt::f32;   // the caller's HWIO weights (and weight gradient)
  auto key(int kind) const {
    return std::make_tuple(kind, n, ci, co, h, w, kh, kw, sh, sw, ph_lo, ph_hi, pw_lo, pw_hi,
                           plain_src, block, act, wei);
  }
};

struct Entry {
  dnnl::primitive prim;
  memory::desc src, weights, dst;  // as the primitive wants them
  memory::desc user_weights;       // HWIO
  dnnl::reorder weights_reorder;   // HWIO -> primitive (fwd, bwd data); primitive -> HWIO (bwd w)
  // Activations as XLA passes them; they differ from src / dst only for a weight gradient on
  // H/W-transposed copies (TransposeForWeights), made by these reorders into per-thread buffers:
  // into the views src_view / dst_view of the primitive's src / dst (at src_offset bytes), the
  // byte ranges src_zero / dst_zero of which stay zero (the rows between stacked images).
  memory::desc user_src, user_dst, src_view, dst_view;
  dnnl::reorder src_reorder, dst_reorder;
  bool copy_activations = false;
  size_t src_offset = 0;
  std::vector<std::pair<size_t, size_t>> src_zero, dst_zero;
  size_t scratch_bytes = 0;
  std::string impl;                // oneDNN's implementation name, e.g. "jit:avx512_core"
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Grow-only, 64-byte-aligned per-thread buffer (slot 0: scratchpad, 1: weights, 2 and 3:
// transposed x and dy copies).
void* ThreadBuffer(int slot, size_t bytes) {
  struct Buf {
    void* p = nullptr;
    size_t size = 0;
    ~Buf() { std::free(p); }
  };
  thread_local Buf bufs[4];
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

// NHWC (bf16) weight gradient on H/W-transposed copies of x and dy? oneDNN's AMX weight-gradient
// kernel (brgconv_bwd_w) works along output rows and is several times slower on narrow ones
// (Fast ResNet-34's last stages are 5 wide in frequency) than on the same convolution with H and
// W swapped, by more than the two transposing reorders cost. Where the stride across the
// (transposed) rows is 1, the copies also stack the batch's images into one tall image, with
// zero rows between them (the padding, shared by neighbours; output rows that straddle two
// images get dy = 0): the kernel's barriers per image then go, and with them its collapse when
// another process competes for the cores (each barrier waits for a descheduled thread: hundreds
// of ms per call), for a little more work on an idle machine (the zero rows). Figures:
// bench/README.md.
bool TransposeForWeights(const Geometry& g) { return g.ow < 8 && g.oh > 2 * g.ow; }

Geometry Transposed(const Geometry& g) {
  Geometry t = g;
  std::swap(t.h, t.w), std::swap(t.oh, t.ow), std::swap(t.kh, t.kw), std::swap(t.sh, t.sw);
  std::swap(t.ph_lo, t.pw_lo), std::swap(t.ph_hi, t.pw_hi);
  return t;
}

Entry* GetEntry(int kind, const Geometry& user) {
  static std::mutex mu;
  static std::map<decltype(user.key(0)), std::unique_ptr<Entry>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(user.key(kind));
  if (it != cache.end()) return it->second.get();

  auto& eng = Engine();
  const bool transpose =
      kind == kBackwardWeights && user.block == 0 && TransposeForWeights(user);
  const Geometry t = transpose ? Transposed(user) : user;
  // Stacked: ph_lo zero rows, the images with `sep` zero rows between them (each image's zero
  // padding above and below, and room for its last output row), ph_hi zero rows.
  const bool stack = transpose && t.sh == 1;
  const int64_t sep =
      std::max({t.ph_lo, t.ph_hi, t.ph_lo + t.ph_hi - t.kh + 1, static_cast<int64_t>(0)});
  const int64_t hs = t.h + sep;  // rows from one image to the next in the stack
  Geometry g = t;                // the primitive's problem
  if (stack) {
    g.n = 1, g.h = t.ph_lo + t.n * hs - sep + t.ph_hi, g.oh = g.h - t.kh + 1;
    g.ph_lo = g.ph_hi = 0;
  }
  const tag blocked = g.block == 0 ? tag::nhwc : g.block == 16 ? tag::nChw16c : tag::nChw8c;
  memory::desc src({g.n, g.ci, g.h, g.w}, g.act,
                   g.plain_src && g.block != 0 ? tag::nchw : blocked);
  memory::desc dst({g.n, g.co, g.oh, g.ow}, g.act, blocked);
  // The primitive's weights: in the activation type; the weight gradient always in f32.
  memory::desc wany({g.co, g.ci, g.kh, g.kw}, kind == kBackwardWeights ? dt::f32 : g.act,
                    tag::any);
  memory::desc whwio({g.co, g.ci, g.kh, g.kw}, g.wei, tag::hwio);
  memory::desc wany_act({g.co, g.ci, g.kh, g.kw}, g.act, tag::any);
  memory::dims strides{g.sh, g.sw}, pad_l{g.ph_lo, g.pw_lo}, pad_r{g.ph_hi, g.pw_hi};
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  dnnl::convolution_forward::primitive_desc fwd(
      eng, dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src, wany_act,
      dst, strides, pad_l, pad_r, attr);
  auto e = std::make_unique<Entry>();
  e->user_weights = whwio;
  e->user_src = src;
  e->user_dst = dst;
  e->src_view = src;
  e->dst_view = dst;
  if (transpose) {  // XLA's NHWC buffers and HWIO weights seen with H and W swapped
    const int64_t c = t.ci, o = t.co;
    e->user_src = memory::desc({t.n, c, t.h, t.w}, t.act, {t.h * t.w * c, 1, c, t.h * c});
    e->user_dst = memory::desc({t.n, o, t.oh, t.ow}, t.act, {t.oh * t.ow * o, 1, o, t.oh * o});
    whwio = memory::desc({o, c, t.kh, t.kw}, t.wei, {1, o, c * o, t.kh * c * o});
    e->user_weights = whwio;
  }
  if (stack) {  // image i: x rows ph_lo + i hs + [0, h), dy rows i hs + [0, oh)
    const int64_t c = t.ci, o = t.co;
    const size_t bytes = memory::data_type_size(t.act), xrow = t.w * c * bytes;
    const size_t yrow = t.ow * o * bytes;
    e->src_view = memory::desc({t.n, c, t.h, t.w}, t.act, {hs * t.w * c, 1, t.w * c, c});
    e->dst_view = memory::desc({t.n, o, t.oh, t.ow}, t.act, {hs * t.ow * o, 1, t.ow * o, o});
    e->src_offset = t.ph_lo * xrow;
    e->src_zero.emplace_back(0, t.ph_lo * xrow);
    for (int64_t i = 0; i < t.n; ++i) {
      const int64_t end = t.ph_lo + i * hs + t.h;  // below image i: sep rows, or ph_hi at the end
      e->src_zero.emplace_back(end * xrow, (i + 1 < t.n ? sep : t.ph_hi) * xrow);
      if (i + 1 < t.n) e->dst_zero.emplace_back((i * hs + t.oh) * yrow, (hs - t.oh) * yrow);
    }
  }
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
  if (transpose) {
    e->copy_activations = true;
    e->src_reorder =
        dnnl::reorder(dnnl::reorder::primitive_desc(eng, e->user_src, eng, e->src_view));
    e->dst_reorder =
        dnnl::reorder(dnnl::reorder::primitive_desc(eng, e->user_dst, eng, e->dst_view));
    e->impl += stack ? " (H/W transposed, images stacked)" : " (H/W transposed)";
  }
  Entry* out = e.get();
  cache.emplace(user.key(kind), std::move(e));
  return out;
}

// Geometry from the activation shapes ([N, C/b, H, W, b], [N, H, W, 1] input, or NHWC input and
// output) and HWIO weights; data types from the buffers (x: input or its gradient, y: output or
// its gradient, w: weights or their gradient).
ffi::Error MakeGeometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                        ffi::Span<const int64_t> y, ffi::DataType x_type, ffi::DataType w_type,
                        ffi::DataType y_type, int64_t sh, int64_t sw, int64_t ph_lo,
                        int64_t ph_hi, int64_t pw_lo, int64_t pw_hi, Geometry* g) {
  auto type = [](ffi::DataType t, dt* out) {
    if (t == ffi::DataType::F32) return *out = dt::f32, true;
    if (t == ffi::DataType::BF16) return *out = dt::bf16, true;
    return false;
  };
  dt y_dt;
  if (!type(x_type, &g->act) || !type(y_type, &y_dt) || !type(w_type, &g->wei) ||
      y_dt != g->act)
    return ffi::Error::InvalidArgument("onednn conv: expected float32 or bfloat16 buffers, "
                                       "input and output of one type");
  const bool nhwc = y.size() == 4;
  if (w.size() != 4 || (nhwc && x.size() != 4) ||
      (!nhwc && (y.size() != 5 || (y[4] != 16 && y[4] != 8) ||
                 (x.size() != 5 && x.size() != 4))))
    return ffi::Error::InvalidArgument("onednn conv: expected blocked [N, C/b, H, W, b] "
                                       "activations (b 8 or 16) with [N, H, W, 1] or blocked "
                                       "input, NHWC input and output, and HWIO weights");
  g->block = nhwc ? 0 : y[4];
  g->plain_src = x.size() == 4;
  if (nhwc) {
    g->n = x[0], g->h = x[1], g->w = x[2], g->ci = x[3];
  } else if (g->plain_src) {
    if (x[3] != 1) return ffi::Error::InvalidArgument("onednn conv: plain input needs C = 1");
    g->n = x[0], g->h = x[1], g->w = x[2], g->ci = 1;
  } else {
    if (x[4] != g->block)
      return ffi::Error::InvalidArgument("onednn conv: input and output blocks differ");
    g->n = x[0], g->ci = x[1] * g->block, g->h = x[2], g->w = x[3];
  }
  g->kh = w[0], g->kw = w[1];
  if (nhwc)
    g->co = y[3], g->oh = y[1], g->ow = y[2];
  else
    g->co = y[1] * g->block, g->oh = y[2], g->ow = y[3];
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
    memory src_m(e->user_src, eng, src), dst_m(e->user_dst, eng, dst);
    if (e->copy_activations) {  // weight gradient: x and dy copied, H and W swapped
      char* xt = static_cast<char*>(ThreadBuffer(2, e->src.get_size()));
      char* yt = static_cast<char*>(ThreadBuffer(3, e->dst.get_size()));
      // The zero rows between stacked images: written unless this entry was the last to use
      // these buffers (the reorders write only the images' rows).
      thread_local const Entry* zeroed = nullptr;
      thread_local char *zeroed_x = nullptr, *zeroed_y = nullptr;
      if (zeroed != e || zeroed_x != xt || zeroed_y != yt) {
        for (auto [at, n] : e->src_zero) std::memset(xt + at, 0, n);
        for (auto [at, n] : e->dst_zero) std::memset(yt + at, 0, n);
        zeroed = e, zeroed_x = xt, zeroed_y = yt;
      }
      memory src_v(e->src_view, eng, xt + e->src_offset), dst_v(e->dst_view, eng, yt);
      e->src_reorder.execute(stream, src_m, src_v);
      e->dst_reorder.execute(stream, dst_m, dst_v);
      src_m = memory(e->src, eng, xt), dst_m = memory(e->dst, eng, yt);
    }
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

ffi::Error ConvForward(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y,
                       int64_t sh, int64_t sw, int64_t ph_lo, int64_t ph_hi, int64_t pw_lo,
                       int64_t pw_hi) {
  Geometry g;
  auto err = MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(), x.element_type(),
                          w.element_type(), y->element_type(), sh, sw, ph_lo, ph_hi, pw_lo,
                          pw_hi, &g);
  if (!err.success()) return err;
  return Run(kForward, g, x.untyped_data(), w.untyped_data(), y->untyped_data());
}

ffi::Error ConvBackwardData(ffi::AnyBuffer dy, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx,
                            int64_t sh, int64_t sw, int64_t ph_lo, int64_t ph_hi, int64_t pw_lo,
                            int64_t pw_hi) {
  Geometry g;
  auto err = MakeGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(), dx->element_type(),
                          w.element_type(), dy.element_type(), sh, sw, ph_lo, ph_hi, pw_lo,
                          pw_hi, &g);
  if (!err.success()) return err;
  if (g.plain_src && g.block != 0)
    return ffi::Error::InvalidArgument("onednn conv: no input gradient for plain input");
  return Run(kBackwardData, g, dx->untyped_data(), w.untyped_data(), dy.untyped_data());
}

ffi::Error ConvBackwardWeights(ffi::AnyBuffer x, ffi::AnyBuffer dy,
                               ffi::Result<ffi::AnyBuffer> dw, int64_t sh, int64_t sw,
                               int64_t ph_lo, int64_t ph_hi, int64_t pw_lo, int64_t pw_hi) {
  Geometry g;
  auto err = MakeGeometry(x.dimensions(), dw->dimensions(), dy.dimensions(), x.element_type(),
                          dw->element_type(), dy.element_type(), sh, sw, ph_lo, ph_hi, pw_lo,
                          pw_hi, &g);
  if (!err.success()) return err;
  return Run(kBackwardWeights, g, x.untyped_data(), dw->untyped_data(), dy.untyped_data());
}

}  // namespace

// Appends to `names` the implementation of each probe's primitives (forward, input gradient but
// for a single-channel input, whose gradient XLA computes, weight gradient); false if any is a
// reference loop or cannot be created (the error is appended).
bool ProbeFast(const std::vector<Geometry>& probes, std::string& names) {
  bool fast = true;
  try {
    for (const Geometry& g : probes) {
      for (int kind : {kForward, kBackwardData, kBackwardWeights}) {
        if (g.ci == 1 && kind == kBackwardData) continue;
        const std::string& impl = GetEntry(kind, g)->impl;
        names += impl + " ";
        if (impl.rfind("ref", 0) == 0) fast = false;
      }
    }
  } catch (const std::exception& ex) {
    names += ex.what();
    fast = false;
  }
  return fast;
}

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
  const int fast = ProbeFast(probes, names) ? 1 : 0;
  std::snprintf(out, len, "%s", names.c_str());
  return fast;
}

// Whether oneDNN has native bfloat16 kernels on this CPU for NHWC bf16 activations with float32
// weights (forward, input gradient, weight gradient with an f32 result): the CPU must have bf16
// instructions (AVX512-BF16 or AMX, or AVX2-VNNI-2; elsewhere oneDNN emulates bf16 on AVX-512,
// slower than f32) and the primitives for a stride-1, a stride-2 and a narrow (weight gradient
// on transposed copies) 3x3 convolution must be optimized ones, not reference loops. Writes the
// effective ISA and the implementation names to `out`. Returns 1 if so.
extern "C" int SsvConvProbeBf16(char* out, int len) {
  const unsigned isa = static_cast<unsigned>(dnnl::get_effective_cpu_isa());
  auto has = [isa](unsigned bits) { return (isa & bits) == bits; };
  const bool native = has(dnnl_cpu_isa_avx512_core_bf16) || has(dnnl_cpu_isa_avx2_vnni_2);
  std::string names = std::string("isa ") +
                      (has(dnnl_cpu_isa_avx512_core_amx) ? "avx512_core_amx"
                       : has(dnnl_cpu_isa_avx512_core_bf16) ? "avx512_core_bf16"
                       : has(dnnl_cpu_isa_avx2_vnni_2) ? "avx2_vnni_2"
                       : has(dnnl_cpu_isa_avx512_core) ? "avx512_core (no bf16 instructions)"
                       : has(dnnl_cpu_isa_avx2) ? "avx2 (no bf16 instructions)"
                                                : "without AVX2 or AVX-512") +
                      ": ";
  const std::vector<Geometry> probes = {
      {2, 16, 16, 8, 8, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1, true, 0, dt::bf16, dt::f32},
      {2, 16, 32, 8, 8, 4, 4, 3, 3, 2, 2, 1, 1, 1, 1, true, 0, dt::bf16, dt::f32},
      {2, 16, 16, 20, 5, 20, 5, 3, 3, 1, 1, 1, 1, 1, 1, true, 0, dt::bf16, dt::f32},  // narrow
  };
  const bool fast = ProbeFast(probes, names) && native;
  std::snprintf(out, len, "%s", names.c_str());
  return fast ? 1 : 0;
}

#define SSV_CONV_ATTRS                                                              \
  .Attr<int64_t>("sh").Attr<int64_t>("sw").Attr<int64_t>("ph_lo").Attr<int64_t>( \
      "ph_hi").Attr<int64_t>("pw_lo").Attr<int64_t>("pw_hi")

#define SSV_CONV_BIND                                                                   \
  ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>() \
      SSV_CONV_ATTRS

XLA_FFI_DEFINE_HANDLER_SYMBOL(SsvConvForward, ConvForward, SSV_CONV_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SsvConvBackwardData, ConvBackwardData, SSV_CONV_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SsvConvBackwardWeights, ConvBackwardWeights, SSV_CONV_BIND);
