"""Tensor creation and conversion (keras.ops names). Nothing here records on the tape. New
tensors live on the current device (`kilnet.device(...)`), *_like ones beside their input."""
from __future__ import annotations

import numbers

import numpy as np

from kilnet.backend import current_device
from kilnet.engine.tensor import Tensor, as_tensor, same_device, value_of

__all__ = ["convert_to_tensor", "arange", "zeros", "ones", "full", "zeros_like", "ones_like", "full_like",
           "eye"]


def _xp_current():
    if current_device() == "cuda":
        import cupy
        return cupy
    return np


def _shape(shape, op):
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    try:
        out = tuple(int(value_of(s)) for s in shape)
    except TypeError:
        raise TypeError(f"{op}: shape must be an int or a tuple of ints, got {shape!r}") from None
    if any(s < 0 for s in out):
        raise ValueError(f"{op}: negative dimension in shape {out}")
    return out


def convert_to_tensor(x, dtype=None, sparse=None):
    """x as a kilnet Tensor (Tensors and Variables as they are, or cast to dtype; arrays wrapped
    on their device; Python floats become float32)."""
    if sparse:
        raise ValueError("convert_to_tensor: sparse tensors are not supported")
    if isinstance(x, (list, tuple)) and any(isinstance(e, Tensor) for e in x):
        xp = same_device(*x)
        x = xp.stack([xp.asarray(value_of(e)) for e in x])
    return as_tensor(x, None if dtype is None else np.dtype(dtype))


def arange(start, stop=None, step=1, dtype=None):
    """Evenly spaced values in [start, stop); int32 for integer arguments, float32 for floats
    (Keras's defaults)."""
    if dtype is None:
        ints = all(isinstance(v, (numbers.Integral, np.integer)) for v in (start, stop, step) if v is not None)
        dtype = "int32" if ints else "float32"
    if step == 0:
        raise ValueError("arange: step must not be 0")
    xp = _xp_current()
    if stop is None:
        start, stop = 0, start
    return Tensor(xp.arange(start, stop, step, dtype=np.dtype(dtype)))


def zeros(shape, dtype=None):
    return Tensor(_xp_current().zeros(_shape(shape, "zeros"), np.dtype(dtype or "float32")))


def ones(shape, dtype=None):
    return Tensor(_xp_current().ones(_shape(shape, "ones"), np.dtype(dtype or "float32")))


def full(shape, fill_value, dtype=None):
    return Tensor(_xp_current().full(_shape(shape, "full"), value_of(fill_value), np.dtype(dtype or "float32")))


def eye(N, M=None, k=0, dtype=None):
    return Tensor(_xp_current().eye(int(N), None if M is None else int(M), int(k), dtype=np.dtype(dtype or "float32")))


def _like(x, dtype):
    x = as_tensor(x)
    return x, same_device(x), (x.dtype if dtype is None else np.dtype(dtype))


def zeros_like(x, dtype=None):
    x, xp, dt = _like(x, dtype)
    return Tensor(xp.zeros(x.shape, dt))


def ones_like(x, dtype=None):
    x, xp, dt = _like(x, dtype)
    return Tensor(xp.ones(x.shape, dt))


def full_like(x, fill_value, dtype=None):
    x, xp, dt = _like(x, dtype)
    return Tensor(xp.full(x.shape, value_of(fill_value), dt))
