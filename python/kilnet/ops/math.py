"""Elementwise math and reductions (keras.ops names): each a forward on the operands' array
module (numpy or CuPy) and its gradient rule. Integer inputs of float-valued functions become
float32 (Keras's floatx); float64 stays float64."""
from __future__ import annotations

import math as _math

import numpy as np

from kilnet.engine.tape import record
from kilnet.engine.tensor import Tensor, as_tensor, same_device
from kilnet.ops._base import expand_reduced, float_tensor, grad_like, nary, norm_axes, unary, wrap

__all__ = ["square", "sqrt", "rsqrt", "reciprocal", "exp", "log", "log1p", "expm1", "abs", "absolute",
           "sign", "sin", "cos", "erf", "maximum", "minimum", "clip", "where", "sum", "mean", "max", "min",
           "var", "std", "argmax", "argmin", "logsumexp", "floor", "ceil", "round"]


# ------------------------------------------------------------------ elementwise
def square(x):
    return unary(x, lambda v: v * v, lambda g, v, y: 2 * g * v, floating=False)


def sqrt(x):
    return unary(x, lambda v: _xp(v).sqrt(v), lambda g, v, y: g * 0.5 / y)


def rsqrt(x):
    """1 / sqrt(x)."""
    return unary(x, lambda v: 1 / _xp(v).sqrt(v), lambda g, v, y: -0.5 * g * y * y * y)


def reciprocal(x):
    return unary(x, lambda v: 1 / v, lambda g, v, y: -g * y * y)


def exp(x):
    return unary(x, lambda v: _xp(v).exp(v), lambda g, v, y: g * y)


def log(x):
    return unary(x, lambda v: _xp(v).log(v), lambda g, v, y: g / v)


def log1p(x):
    return unary(x, lambda v: _xp(v).log1p(v), lambda g, v, y: g / (1 + v))


def expm1(x):
    return unary(x, lambda v: _xp(v).expm1(v), lambda g, v, y: g * (y + 1))


def abs(x):
    return unary(x, lambda v: _xp(v).abs(v), lambda g, v, y: g * _xp(v).sign(v), floating=False)


absolute = abs


def sin(x):
    return unary(x, lambda v: _xp(v).sin(v), lambda g, v, y: g * _xp(v).cos(v))


def cos(x):
    return unary(x, lambda v: _xp(v).cos(v), lambda g, v, y: -g * _xp(v).sin(v))


def erf(x):
    """The error function; its gradient 2/sqrt(pi) * exp(-x^2)."""
    c = 2.0 / _math.sqrt(_math.pi)
    return unary(x, _erf, lambda g, v, y: g * c * _xp(v).exp(-v * v))


def _erf(v):
    xp = _xp(v)
    if xp is not np:
        from cupyx.scipy.special import erf as cerf
        return cerf(v)
    try:
        from scipy.special import erf as serf
    except ImportError:
        return np.vectorize(_math.erf, otypes=[v.dtype])(v) if v.size else np.empty_like(v)
    return serf(v).astype(v.dtype, copy=False)


# non-differentiable elementwise: Tensors that carry no gradient
def sign(x):
    x = as_tensor(x)
    return wrap(same_device(x), _xp(x.value).sign(x.value))


def floor(x):
    x = float_tensor(x)
    return wrap(same_device(x), _xp(x.value).floor(x.value))


def ceil(x):
    x = float_tensor(x)
    return wrap(same_device(x), _xp(x.value).ceil(x.value))


def round(x, decimals=0):
    x = as_tensor(x)
    return wrap(same_device(x), _xp(x.value).round(x.value, decimals))


# ------------------------------------------------------------------ broadcasting selections
def maximum(x1, x2):
    """Elementwise maximum; at ties the gradient is split evenly (as PyTorch and JAX do)."""
    def rule(g, vals, y):
        a, b = vals
        xp = _xp(g)
        half = xp.asarray(0.5, g.dtype)
        wa = xp.where(a > b, 1, xp.where(a == b, half, 0)).astype(g.dtype, copy=False)
        return [g * wa, g * (1 - wa)]
    return nary([x1, x2], lambda a, b: same_device(a, b).maximum(a, b), rule)


def minimum(x1, x2):
    def rule(g, vals, y):
        a, b = vals
        xp = _xp(g)
        half = xp.asarray(0.5, g.dtype)
        wa = xp.where(a < b, 1, xp.where(a == b, half, 0)).astype(g.dtype, copy=False)
        return [g * wa, g * (1 - wa)]
    return nary([x1, x2], lambda a, b: same_device(a, b).minimum(a, b), rule)


def clip(x, x_min, x_max):
    """x limited to [x_min, x_max] (bounds may be tensors and broadcast). The gradient flows to
    x where x_min <= x <= x_max, to a bound where it is the one taken (PyTorch's clamp)."""
    def rule(g, vals, y):
        v, lo, hi = vals
        xp = _xp(g)
        below, above = v < lo, v > hi
        inside = ~(below | above)
        return [g * inside, g * (below & ~above) if isinstance(x_min, Tensor) else None,
                g * above if isinstance(x_max, Tensor) else None]

    def fwd(v, lo, hi):
        xp = same_device(v, lo, hi)
        return xp.minimum(xp.maximum(v, lo), hi)
    return nary([x, x_min, x_max], fwd, rule)


def where(condition, x1=None, x2=None):
    """x1 where condition holds, else x2 (broadcasting); with only a condition, the indices of
    its true elements (a tuple of int Tensors, as numpy's nonzero)."""
    cond = as_tensor(condition)
    if x1 is None and x2 is None:
        xp = same_device(cond)
        return tuple(Tensor(i) for i in xp.nonzero(cond.value))
    if x1 is None or x2 is None:
        raise ValueError("where: x1 and x2 must both be given, or neither")
    xp = same_device(cond, x1, x2)
    c = cond.value.astype(bool, copy=False)

    def rule(g, vals, y):
        z = xp.zeros((), g.dtype)
        return [None, xp.where(c, g, z), xp.where(c, z, g)]
    return nary([cond, x1, x2], lambda cv, a, b: xp.where(c, a, b), rule, differentiable=(1, 2))


# ------------------------------------------------------------------ reductions
def _reduce_prep(x, axis, op, floating=False):
    x = float_tensor(x) if floating else as_tensor(x)
    xp = same_device(x)
    return x, xp, norm_axes(axis, x.ndim, op, x.shape)


def sum(x, axis=None, keepdims=False):
    x, xp, axes = _reduce_prep(x, axis, "sum")
    xv = x.value
    y = wrap(xp, xp.sum(xv, axis=axes, keepdims=keepdims))
    if x._rg:
        record((x,), (y,), lambda g, needs: (grad_like(expand_reduced(xp, g, xv.shape, axes, keepdims), xv),))
    return y


def _count(shape, axes):
    n = 1
    for a in (range(len(shape)) if axes is None else axes):
        n *= shape[a]
    return n


def mean(x, axis=None, keepdims=False):
    x, xp, axes = _reduce_prep(x, axis, "mean", floating=True)
    xv = x.value
    n = _count(xv.shape, axes)
    y = wrap(xp, xp.mean(xv, axis=axes, keepdims=keepdims))
    if x._rg:
        record((x,), (y,), lambda g, needs: (grad_like(expand_reduced(xp, g / n, xv.shape, axes, keepdims), xv),))
    return y


def var(x, axis=None, keepdims=False):
    """Population variance (ddof=0), as keras.ops.var."""
    x, xp, axes = _reduce_prep(x, axis, "var", floating=True)
    xv = x.value
    n = _count(xv.shape, axes)
    c = xv - xp.mean(xv, axis=axes, keepdims=True)
    y = wrap(xp, xp.mean(c * c, axis=axes, keepdims=keepdims))
    if x._rg:
        record((x,), (y,), lambda g, needs: (grad_like(expand_reduced(xp, g, xv.shape, axes, keepdims) * c * (2 / n), xv),))
    return y


def std(x, axis=None, keepdims=False):
    """Population standard deviation: sqrt(var), its gradient by composition."""
    return sqrt(var(x, axis=axis, keepdims=keepdims))


def _extreme(x, axis, keepdims, initial, op, fn):
    x, xp, axes = _reduce_prep(x, axis, op)
    xv = x.value
    if xv.size == 0 and initial is None:
        raise ValueError(f"{op}: cannot reduce an empty tensor of shape {xv.shape} without initial=")
    kw = {} if initial is None else {"initial": initial}
    yk = getattr(xp, fn)(xv, axis=axes, keepdims=True, **kw)
    y = wrap(xp, yk if keepdims else (yk.reshape(()) if axes is None else xp.squeeze(yk, axes)))
    if x._rg:
        def bw(g, needs):
            mask = (xv == yk).astype(g.dtype)
            cnt = xp.sum(mask, axis=axes, keepdims=True)
            gx = expand_reduced(xp, g, xv.shape, axes, keepdims)
            return (grad_like(gx * mask / xp.maximum(cnt, 1), xv),)
        record((x,), (y,), bw)
    return y


def max(x, axis=None, keepdims=False, initial=None):
    """Maximum over axis; the gradient goes to the maximal elements (split evenly at ties)."""
    return _extreme(x, axis, keepdims, initial, "max", "max")


def min(x, axis=None, keepdims=False, initial=None):
    return _extreme(x, axis, keepdims, initial, "min", "min")


def _arg(x, axis, keepdims, op, fn):
    x = as_tensor(x)
    xp = same_device(x)
    xv = x.value
    if xv.size == 0:
        raise ValueError(f"{op}: empty tensor of shape {xv.shape}")
    if axis is None:
        r = getattr(xp, fn)(xv.reshape(-1))
        if keepdims:
            r = xp.asarray(r).reshape((1,) * xv.ndim)
    else:
        (a,) = norm_axes(axis, xv.ndim, op, xv.shape)
        r = getattr(xp, fn)(xv, axis=a)
        if keepdims:
            r = xp.expand_dims(r, a)
    return wrap(xp, xp.asarray(r).astype(np.int32))


def argmax(x, axis=None, keepdims=False):
    """Index of the maximum (int32, as Keras); no gradient."""
    return _arg(x, axis, keepdims, "argmax", "argmax")


def argmin(x, axis=None, keepdims=False):
    return _arg(x, axis, keepdims, "argmin", "argmin")


def logsumexp(x, axis=None, keepdims=False):
    """log(sum(exp(x), axis)) computed stably; the gradient is softmax(x) over axis."""
    x, xp, axes = _reduce_prep(x, axis, "logsumexp", floating=True)
    xv = x.value
    if xv.size == 0:
        raise ValueError(f"logsumexp: empty tensor of shape {xv.shape}")
    m = xp.max(xv, axis=axes, keepdims=True)
    m = xp.where(xp.isfinite(m), m, xp.zeros((), m.dtype))
    lk = xp.log(xp.sum(xp.exp(xv - m), axis=axes, keepdims=True)) + m
    y = wrap(xp, lk if keepdims else (lk.reshape(()) if axes is None else xp.squeeze(lk, axes)))
    if x._rg:
        def bw(g, needs):
            gx = expand_reduced(xp, g, xv.shape, axes, keepdims)
            return (grad_like(gx * xp.exp(xv - lk), xv),)
        record((x,), (y,), bw)
    return y


def _xp(v):
    return same_device(v)


# ------------------------------------------------------------------ comparisons and logic (no gradient)
def _compare(fn):
    def op(x1, x2):
        xp = same_device(x1, x2)
        from kilnet.ops._base import operand
        return wrap(xp, getattr(xp, fn)(operand(x1, xp), operand(x2, xp)))
    op.__name__ = fn
    op.__doc__ = f"Elementwise {fn} (broadcasting); a boolean Tensor with no gradient."
    return op


equal = _compare("equal")
not_equal = _compare("not_equal")
greater = _compare("greater")
greater_equal = _compare("greater_equal")
less = _compare("less")
less_equal = _compare("less_equal")
logical_and = _compare("logical_and")
logical_or = _compare("logical_or")
logical_xor = _compare("logical_xor")


def logical_not(x):
    x = as_tensor(x)
    return wrap(same_device(x), same_device(x).logical_not(x.value))


__all__ += ["equal", "not_equal", "greater", "greater_equal", "less", "less_equal", "logical_and",
            "logical_or", "logical_xor", "logical_not"]
