"""Activations and the softmax family (keras.ops names). float32 C-contiguous relu, sigmoid,
tanh and last-axis softmax run on our C++/CUDA kernels (kilnet.backend.kernels_for); other
dtypes and axes on numpy/CuPy. softmax and sigmoid outputs carry `_keras_logits`
(("softmax"|"sigmoid", input Tensor)) so a cross-entropy loss can fuse with its logits."""
from __future__ import annotations

import math as _math

import numpy as np

from kilnet.backend import cpu as _cpu
from kilnet.engine import precision as _precision
from kilnet.engine.tape import record
from kilnet.engine.tensor import same_device
from kilnet.ops._base import float_tensor, grad_like, kernels, kernels_ok, norm_axes, unary, wrap
from kilnet.ops.math import _erf

__all__ = ["relu", "relu6", "sigmoid", "hard_sigmoid", "tanh", "softmax", "log_softmax", "gelu", "silu",
           "swish", "leaky_relu", "elu", "softplus", "softsign"]


def _kernel_activation(x, name, fallback_fwd, fallback_rule):
    """relu/sigmoid/tanh: the C++ kernel for float32 contiguous data, else xp."""
    x = float_tensor(x)
    xv = x.value
    if not kernels_ok(xv):
        return x, unary(x, fallback_fwd, fallback_rule)
    xp = same_device(x)
    k = kernels(xv)
    yv = xp.empty_like(xv)
    k.activation_forward(name, xv, yv)
    y = wrap(xp, yv)
    if x._rg:
        def bw(g, needs):
            g = xp.ascontiguousarray(g, dtype=np.float32)
            dx = xp.empty_like(g)
            k.activation_backward(name, yv, g, dx)
            return (dx,)
        record((x,), (y,), bw)
    return x, y


def relu(x):
    return _kernel_activation(x, "relu", lambda v: same_device(v).maximum(v, 0),
                              lambda g, v, y: g * (v > 0))[1]


def relu6(x):
    return unary(x, lambda v: same_device(v).clip(v, 0, 6), lambda g, v, y: g * ((v > 0) & (v < 6)))


def sigmoid(x):
    x, y = _kernel_activation(x, "sigmoid", _sigmoid, lambda g, v, y: g * y * (1 - y))
    y._keras_logits = ("sigmoid", x)
    return y


def _sigmoid(v):
    xp = same_device(v)
    e = xp.exp(-xp.abs(v))            # stable on both sides
    return xp.where(v >= 0, 1 / (1 + e), e / (1 + e))


def hard_sigmoid(x):
    """relu6(x + 3) / 6, as Keras 3."""
    return unary(x, lambda v: same_device(v).clip(v / 6 + 0.5, 0, 1),
                 lambda g, v, y: g * ((v > -3) & (v < 3)) / 6)


def tanh(x):
    return _kernel_activation(x, "tanh", lambda v: same_device(v).tanh(v), lambda g, v, y: g * (1 - y * y))[1]


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) over axis (an int or a tuple)."""
    x = float_tensor(x)
    xp = same_device(x)
    xv = x.value
    axes = norm_axes(axis, xv.ndim, "softmax", xv.shape)
    last = xv.ndim > 0 and axes == (xv.ndim - 1,)
    if last and kernels_ok(xv):
        k = kernels(xv)
        x2 = xv.reshape(-1, xv.shape[-1])
        y2 = xp.empty_like(x2)
        k.softmax_forward(x2, y2)
        y = wrap(xp, y2.reshape(xv.shape))

        def bw(g, needs):
            g2 = xp.ascontiguousarray(g, dtype=np.float32).reshape(y2.shape)
            dx = xp.empty_like(g2)
            k.softmax_backward(y2, g2, dx)
            return (dx.reshape(xv.shape),)
    else:
        m = xp.max(xv, axis=axes, keepdims=True)
        e = xp.exp(xv - xp.where(xp.isfinite(m), m, xp.zeros((), m.dtype)))
        y = wrap(xp, e / xp.sum(e, axis=axes, keepdims=True))

        def bw(g, needs):
            yv = y.value
            return (grad_like(yv * (g - xp.sum(g * yv, axis=axes, keepdims=True)), xv),)
    if x._rg:
        record((x,), (y,), bw)
    if last:
        y._keras_logits = ("softmax", x)
    return y


def log_softmax(x, axis=-1):
    """x - logsumexp(x, axis), computed stably."""
    x = float_tensor(x)
    xp = same_device(x)
    xv = x.value
    axes = norm_axes(axis, xv.ndim, "log_softmax", xv.shape)
    m = xp.max(xv, axis=axes, keepdims=True)
    z = xv - xp.where(xp.isfinite(m), m, xp.zeros((), m.dtype))
    y = wrap(xp, z - xp.log(xp.sum(xp.exp(z), axis=axes, keepdims=True)))
    if x._rg:
        def bw(g, needs):
            return (grad_like(g - xp.exp(y.value) * xp.sum(g, axis=axes, keepdims=True), xv),)
        record((x,), (y,), bw)
    return y


_C = _math.sqrt(2 / _math.pi)


def gelu_rules(approximate):
    """(fwd(v), rule(g, v, y)) of GELU on arrays: the C++ kernels for float32 host arrays (the
    Transformer MLP's hot activation), numpy/CuPy formulas otherwise."""
    def fwd(v, out=None):
        """out: a C-contiguous float32 or bfloat16 array of v's shape to write into (a layer's
        buffer; bfloat16: rounded once), taken for float32 host arrays and, into a bfloat16 out,
        bfloat16 ones (widened exactly: a mixed-precision Dense's bfloat16 pre-activation)."""
        if type(v) is np.ndarray and v.dtype == np.float32:
            y = out if out is not None else np.empty_like(v)
            _cpu.gelu_forward(np.ascontiguousarray(v), y, approximate)
            return y
        if type(v) is np.ndarray and _precision.is_bf16(v.dtype) and (out is None or _precision.is_bf16(out.dtype)):
            y = out if out is not None else np.empty_like(v)
            _cpu.gelu_forward(np.ascontiguousarray(v), y, approximate)
            return y
        xp = same_device(v)
        if approximate:
            return 0.5 * v * (1 + xp.tanh(_C * (v + 0.044715 * v ** 3)))
        return 0.5 * v * (1 + _erf(v / _math.sqrt(2)))
    fwd.takes_out = True    # (ActivatedLayer writes into its buffer instead of copying)
    fwd.takes_bf16 = True   # (a bfloat16 input into a bfloat16 out: Dense keeps its pre-activation bfloat16)

    def rule(g, v, y, out=None):
        """out: a bfloat16 array of v's shape for the gradient rounded once (v bfloat16: the
        operand a mixed-precision Dense's bfloat16 GEMMs take next); else a float32 one."""
        if type(v) is np.ndarray and type(g) is np.ndarray and (v.dtype == np.float32 or _precision.is_bf16(v.dtype)) \
                and (g.dtype == np.float32 or _precision.is_bf16(g.dtype)):
            # float32 dx (a bfloat16 operand's gradient stays float32, as the tape's rule)
            dx = out if out is not None else np.empty(v.shape, np.float32)
            _cpu.gelu_backward(np.ascontiguousarray(v), np.ascontiguousarray(g, dtype=np.float32), dx, approximate)
            return dx
        xp = same_device(v)
        if approximate:
            t = xp.tanh(_C * (v + 0.044715 * v ** 3))
            return g * (0.5 * (1 + t) + 0.5 * v * (1 - t * t) * _C * (1 + 3 * 0.044715 * v * v))
        return g * (0.5 * (1 + _erf(v / _math.sqrt(2))) + v * xp.exp(-0.5 * v * v) / _math.sqrt(2 * _math.pi))
    rule.takes_out = True   # (a bfloat16 v's gradient into a bfloat16 out: ActivatedLayer's buffer)
    return fwd, rule


def gelu(x, approximate=True):
    """Gaussian error linear unit: the tanh approximation (approximate=True, Keras's default)
    or the exact 0.5 * x * (1 + erf(x / sqrt(2)))."""
    fwd, rule = gelu_rules(bool(approximate))
    return unary(x, fwd, rule)


def silu(x):
    """x * sigmoid(x)."""
    def rule(g, v, y):
        s = _sigmoid(v)
        return g * s * (1 + v * (1 - s))
    return unary(x, lambda v: v * _sigmoid(v), rule)


swish = silu


def leaky_relu(x, negative_slope=0.2):
    return unary(x, lambda v: same_device(v).where(v > 0, v, v * negative_slope),
                 lambda g, v, y: same_device(v).where(v > 0, g, g * negative_slope))


def elu(x, alpha=1.0):
    return unary(x, lambda v: same_device(v).where(v > 0, v, alpha * same_device(v).expm1(same_device(v).minimum(v, 0))),
                 lambda g, v, y: same_device(v).where(v > 0, g, g * (y + alpha)))


def softplus(x):
    """log(1 + exp(x)), stable for large |x|; its gradient sigmoid(x)."""
    return unary(x, lambda v: same_device(v).logaddexp(v, 0), lambda g, v, y: g * _sigmoid(v))


def softsign(x):
    """x / (1 + |x|)."""
    return unary(x, lambda v: v / (1 + same_device(v).abs(v)), lambda g, v, y: g / (1 + same_device(v).abs(v)) ** 2)
