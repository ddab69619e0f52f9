"""Low-precision arrays: bfloat16 (ml_dtypes.bfloat16, the dtype JAX and TensorFlow use; numpy
has none) and float16 (numpy's), and the conversions layers use at their boundaries.

ml_dtypes is imported on first use only: its import takes far longer than `import kilnet` may
(see docs/mixed_precision.md), and float32 programs never need it. float32 <-> bfloat16
conversions of numpy arrays run on the CPU kernels (round to nearest even, as ml_dtypes and
PyTorch); CuPy arrays use the array module's own casts.
"""
from __future__ import annotations

import numpy as np

from kilnet.backend import cpu as _cpu

__all__ = ["bfloat16", "np_dtype", "is_float", "is_low", "convert", "round_through", "dtype_name"]

_F32 = np.dtype(np.float32)
_F16 = np.dtype(np.float16)
_bf16: list = []


def bfloat16() -> np.dtype:
    """numpy's dtype for ml_dtypes.bfloat16 (imports ml_dtypes on the first call)."""
    if not _bf16:
        try:
            import ml_dtypes
        except ImportError:
            raise ImportError("bfloat16 arrays need the ml_dtypes package (pip install ml_dtypes, or "
                              "pip install 'kilnet[mixed]'); the float32 and float16 policies run without it") from None
        _bf16.append(np.dtype(ml_dtypes.bfloat16))
    return _bf16[0]


def np_dtype(name) -> np.dtype:
    """A numpy dtype from a policy dtype name ('float32', 'bfloat16', 'float16') or a dtype."""
    if isinstance(name, str) and name == "bfloat16":
        return bfloat16()
    return np.dtype(name)


def is_bf16(dt) -> bool:
    return dt.kind == "V" and dt.itemsize == 2 and dt.name == "bfloat16"


def is_float(dt) -> bool:
    """float16/32/64 or bfloat16 (whose numpy kind is 'V')."""
    return dt.kind == "f" or is_bf16(dt)


def is_low(dt) -> bool:
    """bfloat16 or float16: a compute dtype below float32."""
    return dt is _F16 or dt == _F16 or is_bf16(dt)


def dtype_name(dt) -> str:
    return "bfloat16" if is_bf16(dt) else np.dtype(dt).name


def convert(a, dt):
    """a as dtype dt (a new array; a itself when it has it already). float32 <-> bfloat16 on
    numpy arrays use the kernels (one pass, round to nearest even)."""
    src = a.dtype
    if src == dt:
        return a
    if type(a) is np.ndarray:
        if is_bf16(dt) and src == _F32:
            return _cpu.to_bfloat16(np.ascontiguousarray(a)).view(dt)
        if dt == _F32 and is_bf16(src):
            return _cpu.from_bfloat16(np.ascontiguousarray(a))
    if dt == _F16:   # values beyond float16's range become inf, as a float16 cast does (loss scaling skips them)
        with np.errstate(over="ignore"):
            return a.astype(dt)
    return a.astype(dt)


def grad_as(g, dt):
    """The gradient g for a tensor of dtype dt: cast to dt, except that the gradient of a
    bfloat16/float16 tensor stays float32 (gradients between layers are not rounded: more
    precise than Keras's bfloat16 gradients, and two conversion passes fewer per layer)."""
    if g.dtype == dt or (is_low(dt) and g.dtype == _F32):
        return g
    return convert(g, dt)


def round_through(a, dt):
    """float32 a rounded to dt (bfloat16/float16) and back: float32 values that dt holds exactly
    (what a layer without a kernel for dt computes on)."""
    return convert(convert(a, dt), _F32)


# Keras's autocast inside a layer written with kilnet.ops under a bfloat16 policy: a matmul of
# float operands there runs on the bfloat16 GEMM (the operands rounded, as Keras casts the
# layer's inputs and variables), with float32 accumulation. Per thread, nested calls stack.
import threading as _threading

_auto = _threading.local()


def autocast_dtype():
    """The compute dtype of the layer call() running on this thread under a low policy, or None."""
    return getattr(_auto, "dtype", None)


def enter_autocast(dt):
    prev = getattr(_auto, "dtype", None)
    _auto.dtype = dt
    return prev


def exit_autocast(token):
    _auto.dtype = token


_warned: set = set()


def warn_if_no_speedup(name) -> None:
    """Once per process and dtype: say when a low compute dtype runs without a faster kernel
    (float16 on the CPU; bfloat16 where the CPU has neither AMX-BF16 nor AVX512-BF16)."""
    if name in _warned:
        return
    _warned.add(name)
    import warnings
    if name == "float16":
        msg = ("float16 policies: kilnet has no float16 CPU kernels; layers compute in float32 on values "
               "rounded to float16 (float16's numerics, no speed-up)")
    elif _cpu.bf16_level() == "fp32":
        msg = ("bfloat16 policies: this CPU (or KILNET_SIMD) gives neither AMX-BF16 nor AVX512-BF16, so the "
               "bfloat16 GEMMs run as float32 GEMMs on rounded operands (bfloat16's numerics, no speed-up)")
    else:
        return
    warnings.warn(msg, RuntimeWarning, stacklevel=4)
