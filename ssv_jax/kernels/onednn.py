"""oneDNN convolutions for the CPU backend, called from jitted JAX code through XLA's FFI.

XLA:CPU's Eigen convolutions are slow on some of Fast ResNet-34's layers (weight gradients and
16-channel layers most); oneDNN's JIT kernels on channel-blocked layouts are fast on all of them
(figures: ``bench/README.md``). ``conv2d`` is a drop-in, differentiable NHWC convolution that
runs forward, input gradient and weight gradient in oneDNN (``onednn_conv.cc``).

The kernel library is compiled on first use (g++, once per source / jaxlib / oneDNN version)
into ``~/.cache/ssv_jax/kernels`` (``$SSV_JAX_KERNEL_DIR`` overrides), against the headers of
the pip packages ``onednn-devel-cpu-gomp`` and ``jaxlib``. Where it cannot be built or
loaded (no compiler, another OS), or oneDNN has only reference loops for the CPU (neither
AVX-512 nor AVX2), ``available()`` is False, ``unavailable_reason()`` says why and callers use
XLA's convolution instead.

float32 activations cross the FFI boundary channel-blocked, ``[N, C/b, H, W, b]``, so oneDNN
never re-lays them out: b = 16 (nChw16c) where oneDNN has fast AVX-512 kernels for it, else 8
(nChw8c, AVX2), as a probe at load time finds (``block_size()``); for C = b this is NHWC
itself. ``conv2d`` converts to and from NHWC with transposes XLA can fuse into neighbouring ops.
Supported in float32: C_out a multiple of b, C_in a multiple of b or 1 (a single-channel stem,
where oneDNN has fast kernels for it, i.e. AVX-512; its input gradient uses XLA).

bfloat16 activations (mixed precision: the kernel may stay float32) cross the boundary as NHWC
itself, the layout of oneDNN's AMX / AVX512-BF16 kernels (its bf16 kernels on nChw16c are slower
than float32 ones): no transposes at all. oneDNN converts the weights to bf16, accumulates in
float32, returns bf16 outputs and input gradients, and the weight gradient summed in float32 (in
the kernel's dtype). Any C_in and C_out; a single-channel (C_in = 1) input runs the float32 stem
kernels on the upcast input (oneDNN's bf16 weight gradient for it is slower than float32's).
bfloat16 needs a CPU with bf16 instructions, as a probe at load time finds
(``unavailable_reason(jnp.bfloat16)`` says why not).

Under a ``jit`` whose batch is split over devices (the train step's data parallelism, one or many
processes), each device runs the kernels on its own batch shard and the weight gradient is
summed over shards (``custom_partitioning``); other shardings run replicated.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import subprocess
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

_SOURCE = os.path.join(os.path.dirname(__file__), "onednn_conv.cc")
_TARGETS = {
    "ssv_onednn_conv_fwd": "SsvConvForward",
    "ssv_onednn_conv_bwd_data": "SsvConvBackwardData",
    "ssv_onednn_conv_bwd_weights": "SsvConvBackwardWeights",
}
_state: dict = {}


def _dist_file(dist: str, suffix: str) -> str:
    """Absolute path of the installed file of pip package ``dist`` whose path ends in suffix."""
    d = importlib.metadata.distribution(dist)
    for f in d.files or ():
        path = os.path.normpath(str(d.locate_file(f)))
        if path.replace(os.sep, "/").endswith("/" + suffix):
            return path
    raise FileNotFoundError(f"{dist} has no file ending in {suffix}")


def _kernel_dir() -> str:
    return os.path.expanduser(
        os.environ.get("SSV_JAX_KERNEL_DIR", os.path.join("~", ".cache", "ssv_jax", "kernels"))
    )


def _build() -> str:
    """Compile onednn_conv.cc (once; cached by content) and return the shared library's path."""
    lib = _dist_file("onednn-cpu-gomp", "lib/libdnnl.so.3")
    hpp = _dist_file("onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl.hpp")
    dnnl_include = os.path.dirname(os.path.dirname(os.path.dirname(hpp)))
    cxx = os.environ.get("CXX", "g++")
    cmd = [
        cxx,
        "-O2",
        "-std=c++17",
        "-shared",
        "-fPIC",
        _SOURCE,
        "-I",
        jax.ffi.include_dir(),
        "-I",
        dnnl_include,
        lib,
        "-Wl,-rpath," + os.path.dirname(lib),
    ]
    with open(_SOURCE, "rb") as f:
        digest = hashlib.sha256(
            f.read() + " ".join(cmd).encode() + jax.__version__.encode()
        ).hexdigest()[:16]
    out = os.path.join(_kernel_dir(), f"onednn_conv_{digest}.so")
    if os.path.exists(out):
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(out))
    os.close(fd)
    try:
        proc = subprocess.run(cmd + ["-o", tmp], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"compiling {_SOURCE} failed:\n{proc.stderr[-2000:]}")
        os.replace(tmp, out)  # atomic: concurrent builders each publish a whole file
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


def _load() -> None:
    if "ok" in _state:
        return
    try:
        lib = ctypes.cdll.LoadLibrary(_build())
        names = ctypes.create_string_buffer(1024)
        block = next((b for b in (16, 8) if lib.SsvConvProbe(b, 0, names, len(names))), None)
        if block is None:
            raise RuntimeError(
                "oneDNN has only reference kernels on this CPU (it needs AVX-512 "
                f"or AVX2; got: {names.value.decode().strip()}), which are slower "
                "than XLA's"
            )
        for name, symbol in _TARGETS.items():
            jax.ffi.register_ffi_target(
                name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu"
            )
        stem = bool(lib.SsvConvProbe(block, 1, names, len(names)))  # single-channel input
        bf16 = bool(lib.SsvConvProbeBf16(names, len(names)))
        isa = names.value.decode().split(":", 1)[0].removeprefix("isa ").strip()
        bf16_reason = None
        if not bf16:
            bf16_reason = (
                "oneDNN has no native bfloat16 convolution kernels on this CPU (it needs "
                "AVX512-BF16 / AMX or AVX2-VNNI-2; got: "
                f"{names.value.decode().strip()}); use float32"
            )
        _state.update(
            ok=True,
            lib=lib,
            block=block,
            single_channel=stem,
            bf16=bf16,
            bf16_reason=bf16_reason,
            bf16_isa=isa,
        )
    except Exception as e:  # noqa: BLE001  (any failure means: use XLA's convolutions)
        _state.update(ok=False, reason=f"{type(e).__name__}: {e}")


def _is_bf16(dtype) -> bool:
    return dtype is not None and jnp.dtype(dtype) == jnp.bfloat16


def available(dtype=None) -> bool:
    """True when the oneDNN kernels are built (building them now if needed) and registered;
    with ``dtype`` bfloat16, also that oneDNN has native bf16 kernels on this CPU."""
    return unavailable_reason(dtype) is None


def unavailable_reason(dtype=None) -> str | None:
    """Why ``available(dtype)`` is False (None when it is True)."""
    _load()
    if not _state["ok"]:
        return _state["reason"]
    return _state["bf16_reason"] if _is_bf16(dtype) else None


def amx_bf16() -> bool:
    """True when oneDNN runs its bfloat16 convolutions on AMX here (recent Intel Xeon), the one
    CPU where the bf16 train step measured faster than float32 (bench/README.md). Elsewhere
    (AVX512-BF16 alone, or bf16 emulated) it has not been measured faster."""
    return available(jnp.bfloat16) and _state["bf16_isa"] == "avx512_core_amx"


def block_size() -> int:
    """Channel block of the activations passed to oneDNN: 16 (AVX-512) or 8 (AVX2)."""
    if not available():
        raise RuntimeError(f"oneDNN kernels unavailable: {unavailable_reason()}")
    return _state["block"]


def supports(x_shape, kernel_shape, dtype) -> bool:
    """Whether ``conv2d`` can run this convolution in oneDNN (shapes NHWC / HWIO, ``dtype`` the
    input's: float32, or bfloat16 where the CPU has native bf16 kernels); False when the kernels
    are unavailable."""
    if jnp.dtype(dtype) not in (jnp.float32, jnp.bfloat16) or not available(dtype):
        return False
    if len(x_shape) != 4 or len(kernel_shape) != 4:
        return False
    ci, co, b = kernel_shape[2], kernel_shape[3], block_size()
    if ci == 1:  # single-channel stem: the float32 kernels (bf16: on the upcast input)
        return co % b == 0 and _state["single_channel"]
    return _is_bf16(dtype) or (co % b == 0 and ci % b == 0)  # bf16 NHWC: any channel counts


def to_blocked(x, block: int):
    """``[N, H, W, C]`` -> ``[N, C/block, H, W, block]`` (a bitcast for C = block)."""
    n, h, w, c = x.shape
    return x.reshape(n, h, w, c // block, block).transpose(0, 3, 1, 2, 4)


def from_blocked(x):
    """``[N, C/b, H, W, b]`` -> ``[N, H, W, C]``."""
    n, cb, h, w, b = x.shape
    return x.transpose(0, 2, 3, 1, 4).reshape(n, h, w, cb * b)


def _attrs(geom):
    """FFI attributes of ``geom`` = (sh, sw, ph_lo, ph_hi, pw_lo, pw_hi, block), block 0 for
    NHWC activations; the kernel reads the block (and the data types) from the buffers."""
    return dict(zip(("sh", "sw", "ph_lo", "ph_hi", "pw_lo", "pw_hi"), map(np.int64, geom[:6])))


def _ffi_local(name, out_shape, out_dtype, a, b, geom):
    return jax.ffi.ffi_call(name, jax.ShapeDtypeStruct(out_shape, out_dtype))(a, b, **_attrs(geom))


def _mesh_over(sharding) -> Mesh:
    """A 1-D mesh 'b' over ``sharding``'s devices, in its device order."""
    devices = list(getattr(sharding, "_device_assignment", None) or sharding.device_set)
    return Mesh(np.asarray(devices), ("b",), axis_types=(AxisType.Explicit,))


def _batch_split(sharding, shape):
    """``_mesh_over(sharding)`` if the sharding splits only dim 0, evenly over all of its devices
    (the data-parallel case); else None."""
    mesh = _mesh_over(sharding)
    if mesh.size == 1 or shape[0] % mesh.size:
        return None
    ok = sharding.is_equivalent_to(NamedSharding(mesh, P("b")), len(shape))
    return mesh if ok else None


def _make_partitioned(name: str, reduce_batch: bool):
    """FFI call ``name(a, b)`` that runs per batch shard under a sharded ``jit``.

    Operand ``a`` (and ``b`` if ``reduce_batch``) are activations with the batch first. When XLA
    splits ``a``'s batch over devices, each device runs the kernel on its own shard: a batched
    result stays split; the weight gradient (``reduce_batch``) is summed over the shards (psum).
    Any other sharding runs replicated (XLA gathers the operands), as an unpartitioned call.
    """

    @functools.partial(custom_partitioning, static_argnums=(2, 3, 4))
    def call(a, b, out_shape, out_dtype, geom):
        return _ffi_local(name, out_shape, out_dtype, a, b, geom)

    def shardings(mesh, a_ndim, b_ndim, out_ndim):
        def batch(nd):
            return NamedSharding(mesh, P("b", *[None] * (nd - 1)))

        repl = NamedSharding(mesh, P())
        args = (batch(a_ndim), batch(b_ndim) if reduce_batch else repl)
        return args, repl if reduce_batch else batch(out_ndim)

    def partition(out_shape, out_dtype, geom, mesh, arg_shapes, result_shape):
        a, b = arg_shapes
        split = _batch_split(a.sharding, a.shape)
        if split is None:  # replicated fallback
            m = _mesh_over(a.sharding)
            repl = NamedSharding(m, P())
            local = functools.partial(_ffi_local, name, out_shape, out_dtype, geom=geom)
            return m, local, repl, (repl, repl)
        n = split.size
        arg_sh, out_sh = shardings(split, len(a.shape), len(b.shape), len(out_shape))
        local_out = out_shape if reduce_batch else (out_shape[0] // n,) + tuple(out_shape[1:])

        def lower(a, b):
            r = _ffi_local(name, local_out, out_dtype, a, b, geom)
            return jax.lax.psum(r, "b") if reduce_batch else r

        return split, lower, out_sh, arg_sh

    def infer(out_shape, out_dtype, geom, mesh, arg_shapes, result_shape):
        a = arg_shapes[0]
        split = _batch_split(a.sharding, a.shape)
        if split is None:
            return None
        return shardings(split, len(a.shape), len(arg_shapes[1].shape), len(out_shape))[1]

    def rule(out_shape, out_dtype, geom, mesh, operand_types, result_types):
        """Shardy rule: batch factor n shared by ``a`` and (``reduce_batch``: summed away) ``b``
        or the result; every other dimension stays whole."""
        del out_dtype, geom, mesh, result_types
        ranks = [len(t.shape) for t in operand_types]
        a = ["n"] + [f"a{i}" for i in range(ranks[0] - 1)]
        b = ["n"] * reduce_batch + [f"b{i}" for i in range(ranks[1] - reduce_batch)]
        out = ["n"] * (not reduce_batch) + [
            f"o{i}" for i in range(len(out_shape) - (not reduce_batch))
        ]
        extra = dict(reduction_factors=("n",)) if reduce_batch else {}
        return (
            f"{' '.join(a)}, {' '.join(b)} -> {' '.join(out)}",
            dict(need_replication_factors=tuple(f for f in a + b + out if f != "n"), **extra),
        )

    call.def_partition(partition=partition, infer_sharding_from_operands=infer, sharding_rule=rule)
    return call


_PARTITIONED = {
    name: _make_partitioned(name, reduce_batch=name.endswith("weights")) for name in _TARGETS
}


def _ffi(name, out_shape, out_dtype, a, b, geom):
    """``name(a, b)`` with batch partitioning under a sharded jit (see ``_make_partitioned``)."""
    return _PARTITIONED[name](a, b, tuple(out_shape), jnp.dtype(out_dtype), geom)


def _xla_conv(x, kernel, geom):
    sh, sw, plo, phi, qlo, qhi, _ = geom
    return jax.lax.conv_general_dilated(
        x, kernel, (sh, sw), [(plo, phi), (qlo, qhi)], dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _out_shape(xb, kernel, geom):
    """Output shape: blocked ``[N, C/b, OH, OW, b]``, or NHWC for block b = 0."""
    sh, sw, plo, phi, qlo, qhi, b = geom
    n, h, w = (
        (xb.shape[0], xb.shape[1], xb.shape[2])
        if xb.ndim == 4
        else (xb.shape[0], xb.shape[2], xb.shape[3])
    )
    kh, kw, _, co = kernel.shape
    oh, ow = (h + plo + phi - kh) // sh + 1, (w + qlo + qhi - kw) // sw + 1
    return (n, oh, ow, co) if b == 0 else (n, co // b, oh, ow, b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_blocked(xb, kernel, geom):
    return _ffi("ssv_onednn_conv_fwd", _out_shape(xb, kernel, geom), xb.dtype, xb, kernel, geom)


def _conv_blocked_fwd(xb, kernel, geom):
    return _conv_blocked(xb, kernel, geom), (xb, kernel)


def _conv_blocked_bwd(geom, res, dyb):
    xb, kernel = res
    dw = _ffi("ssv_onednn_conv_bwd_weights", kernel.shape, kernel.dtype, xb, dyb, geom)
    if xb.ndim == 5 or geom[6] == 0:  # blocked or NHWC input
        dx = _ffi("ssv_onednn_conv_bwd_data", xb.shape, xb.dtype, dyb, kernel, geom)
    else:  # single-channel float32 input: its gradient through XLA
        dx = jax.vjp(lambda x: _xla_conv(x, kernel, geom), xb)[1](from_blocked(dyb))[0]
    return dx, dw


_conv_blocked.defvjp(_conv_blocked_fwd, _conv_blocked_bwd)


def conv2d(x, kernel, stride=(1, 1), padding=None):
    """NHWC x HWIO convolution in oneDNN, differentiable; equals ``lax.conv_general_dilated``.

    ``padding``: ``[(lo, hi), (lo, hi)]`` zeros per spatial axis (default k // 2 each side).
    Requires ``available()`` and ``supports(x.shape, kernel.shape, x.dtype)``. x float32 with a
    float32 kernel, or x bfloat16 with a float32 or bfloat16 kernel (mixed precision); the output
    and the input gradient have x's dtype, the kernel gradient the kernel's (float32 sums).
    """
    if padding is None:
        padding = [(k // 2, k // 2) for k in kernel.shape[:2]]
    if not available():
        raise RuntimeError(f"oneDNN kernels unavailable: {unavailable_reason()}")
    b = block_size()
    bf16 = _is_bf16(x.dtype)
    if bf16 and not available(x.dtype):
        raise ValueError(f"oneDNN conv: no bfloat16 kernels: {unavailable_reason(x.dtype)}")
    if not supports(x.shape, kernel.shape, x.dtype) or kernel.dtype not in (x.dtype, jnp.float32):
        raise ValueError(
            f"oneDNN conv needs float32 x and kernel, or bfloat16 x with a float32 or bfloat16 "
            f"kernel; float32: C_out % {b} == 0 and C_in % {b} == 0 or 1 (channel block {b} on "
            f"this CPU); got x {x.shape} {x.dtype}, kernel {kernel.shape} {kernel.dtype}."
        )
    pads = (*map(int, padding[0]), *map(int, padding[1]))
    if x.shape[-1] == 1 and bf16:
        # Single-channel stem: float32 kernels on the upcast input (oneDNN's bf16 weight gradient
        # for C_in = 1 is slower than float32's); autodiff casts the gradients back.
        y = conv2d(x.astype(jnp.float32), kernel.astype(jnp.float32), stride, padding)
        return y.astype(x.dtype)
    if bf16:  # NHWC in and out (block 0)
        return _conv_blocked(x, kernel, (int(stride[0]), int(stride[1]), *pads, 0))
    geom = (int(stride[0]), int(stride[1]), *pads, b)
    xb = x if x.shape[-1] == 1 else to_blocked(x, b)
    return from_blocked(_conv_blocked(xb, kernel, geom))


__all__ = [
    "available",
    "amx_bf16",
    "unavailable_reason",
    "block_size",
    "supports",
    "conv2d",
    "to_blocked",
    "from_blocked",
]
