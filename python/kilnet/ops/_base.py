"""Helpers shared by the op files: operand values, axes, output wrapping and the recording
patterns (one input, several broadcasting inputs). Nothing here imports cupy: the array module
always comes from the operands (`same_device`)."""
from __future__ import annotations

import numbers

import numpy as np

from kilnet.backend import cuda_available, device_of, kernels_for
from kilnet.engine.tape import record
from kilnet.engine.tensor import Tensor, as_tensor, same_device, unbroadcast, value_of

__all__ = ["operand", "wrap", "norm_axes", "grad_like", "unary", "nary", "float_tensor", "kernels_ok",
           "expand_reduced", "scatter_add"]


def operand(x, xp):
    """The value of x for an xp computation: arrays as they are, Python/numpy scalars kept as
    scalars (numpy 2 promotion: float32 array * 2.0 stays float32), lists turned into arrays."""
    v = value_of(x)
    if isinstance(v, (numbers.Number, np.generic)) or isinstance(v, np.ndarray) \
            or hasattr(v, "__cuda_array_interface__"):
        return v
    if isinstance(v, (list, tuple)):
        return xp.asarray([value_of(e) for e in v])
    raise TypeError(f"expected a tensor, an array or a number, got {type(x).__name__}")


def wrap(xp, r) -> Tensor:
    """A Tensor over r, numpy scalars (what 0-d numpy arithmetic returns) made 0-d arrays."""
    if xp is np and not isinstance(r, np.ndarray):
        r = np.asarray(r)
    return Tensor(r)


def norm_axes(axis, ndim, op, shape=None):
    """axis (None, int or a sequence) as a sorted tuple of non-negative ints, or None."""
    if axis is None:
        return None
    items = tuple(axis) if isinstance(axis, (tuple, list)) else (axis,)
    out = []
    for a in items:
        if not isinstance(a, (int, np.integer)) or isinstance(a, bool):
            raise TypeError(f"{op}: axis must be an int or a tuple of ints, got {axis!r}")
        a = int(a)
        if not -ndim <= a < ndim:
            raise ValueError(f"{op}: axis {a} is out of range for a tensor of shape "
                             f"{tuple(shape) if shape is not None else (ndim, 'dims')}")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{op}: repeated axis in {axis!r}")
    return tuple(sorted(out))


def grad_like(g, x):
    """g with x's dtype (gradients keep the input dtype)."""
    return g if g.dtype == x.dtype else g.astype(x.dtype)


def float_tensor(x) -> Tensor:
    """x as a Tensor of a floating dtype: ints and bools become float32 (Keras's floatx)."""
    t = as_tensor(x)
    if t.dtype.kind not in "fc":
        t = Tensor(t.value.astype(np.float32))
    return t


def unary(x, fwd, rule, floating=True):
    """A one-input op: y = fwd(xv); rule(g, xv, yv) -> dx. Returns the output Tensor."""
    x = float_tensor(x) if floating else as_tensor(x)
    xv = x.value
    xp = same_device(x)
    y = wrap(xp, fwd(xv))
    if x._rg:
        def bw(g, needs):
            return (grad_like(rule(g, xv, y.value), xv),)
        record((x,), (y,), bw)
    return y


def nary(args, fwd, rule, differentiable=None):
    """A broadcasting op over several operands (Tensors, arrays or Python numbers).
    fwd(*values) -> array; rule(g, values, y) -> one gradient (or None) per operand, before
    unbroadcasting. Only Tensor operands are recorded; `differentiable` (indices) limits them."""
    xp = same_device(*args)
    vals = [operand(a, xp) for a in args]
    y = wrap(xp, fwd(*vals))
    idx = [i for i, a in enumerate(args) if isinstance(a, Tensor)
           and (differentiable is None or i in differentiable)]
    ins = tuple(args[i] for i in idx)
    if any(t._rg for t in ins):
        def bw(g, needs):
            ds = rule(g, vals, y.value)
            out = []
            for i, need in zip(idx, needs):
                d = ds[i]
                if d is None or not need:
                    out.append(None)
                    continue
                v = vals[i]
                if d.shape != g.shape:
                    d = xp.broadcast_to(d, g.shape)
                d = unbroadcast(d, v.shape)
                out.append(grad_like(xp.ascontiguousarray(d), v))
            return out
        record(ins, (y,), bw)
    return y


def kernels_ok(xv):
    """Whether our C++/CUDA elementwise kernels can take this array: float32, C-contiguous,
    non-empty, and its device's kernel module is usable."""
    return (xv.dtype == np.float32 and xv.size > 0 and xv.flags.c_contiguous
            and (device_of(xv) == "cpu" or cuda_available()))


def kernels(xv):
    return kernels_for(xv)


def expand_reduced(xp, g, shape, axes, keepdims):
    """The gradient g of a reduction over `axes` (None = all) broadcast back to `shape`, as a
    writable array."""
    if not keepdims:
        if axes is None:
            g = g.reshape((1,) * len(shape))
        else:
            g = xp.expand_dims(g, axes)
    out = xp.empty(shape, g.dtype)
    out[...] = g
    return out


def scatter_add(xp, d, idx, g):
    """d[idx] += g with repeated indices accumulating (numpy add.at, cupyx.scatter_add)."""
    if xp is np or hasattr(xp.add, "at"):
        xp.add.at(d, idx, g)
    else:   # older CuPy
        import cupyx
        cupyx.scatter_add(d, idx, g)
    return d
