"""Activations by their Keras 3 names (keras.activations).

Two faces of one table:
- functions on tensors (`kilnet.activations.gelu(x)`, ...), differentiable by the tape, for
  user code and layers written with ops;
- `array_rule(name)`: the forward and gradient on plain arrays (numpy or CuPy), which a fused
  layer (Dense, Conv1D/2D, Activation, ...) applies to its linear output when the activation is
  not one of the kernel-fused ones (linear, relu, sigmoid, tanh, softmax).

Formulas follow Keras 3's source (keras/src/activations/activations.py): `gelu` is exact by
default (approximate=False), `hard_sigmoid` is relu6(x + 3) / 6 (Keras 2's 0.2x + 0.5 is gone),
`leaky_relu`'s default slope is 0.2, `selu` uses the fixed (alpha, scale) of Klambauer et al.
"""
from __future__ import annotations

import math

from kilnet.engine.tensor import same_device
from kilnet.ops import nn as _nn
from kilnet.ops._base import unary

__all__ = ["get", "serialize", "deserialize", "array_rule", "KERNEL_ACTIVATIONS", "linear", "relu", "sigmoid",
           "tanh", "softmax", "log_softmax", "gelu", "silu", "swish", "elu", "selu", "softplus", "softsign",
           "leaky_relu", "relu6", "hard_sigmoid", "hard_silu", "hard_swish", "exponential", "mish"]

# Computed by the C++/CUDA elementwise kernels, in place, inside the fused layers.
KERNEL_ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh", "softmax")

_SELU_ALPHA = 1.6732632423543772
_SELU_SCALE = 1.0507009873554805
_SQRT_2_PI = math.sqrt(2 / math.pi)


def _sigmoid(v):
    xp = same_device(v)
    e = xp.exp(-xp.abs(v))            # stable on both sides
    return xp.where(v >= 0, 1 / (1 + e), e / (1 + e))


# ---------------------------------------------------------------------------- array rules
# name -> (fwd(v) -> y, grad(g, v, y) -> dL/dv); v the input, y the output, g dL/dy.

def _gelu_exact():
    return _nn.gelu_rules(False)


def _gelu_tanh():
    return _nn.gelu_rules(True)


def _elu(alpha):
    def fwd(v):
        xp = same_device(v)
        return xp.where(v > 0, v, alpha * xp.expm1(xp.minimum(v, 0)))

    def grad(g, v, y):
        return same_device(v).where(v > 0, g, g * (y + alpha))
    return fwd, grad


def _selu():
    def fwd(v):
        xp = same_device(v)
        return _SELU_SCALE * xp.where(v > 0, v, _SELU_ALPHA * xp.expm1(xp.minimum(v, 0)))

    def grad(g, v, y):
        xp = same_device(v)
        return g * xp.where(v > 0, _SELU_SCALE, y + _SELU_SCALE * _SELU_ALPHA)
    return fwd, grad


def _leaky(slope):
    return (lambda v: same_device(v).where(v > 0, v, v * slope),
            lambda g, v, y: same_device(v).where(v > 0, g, g * slope))


def _mish():
    def fwd(v):
        xp = same_device(v)
        return v * xp.tanh(xp.logaddexp(v, 0))

    def grad(g, v, y):
        xp = same_device(v)
        t = xp.tanh(xp.logaddexp(v, 0))
        return g * (t + v * (1 - t * t) * _sigmoid(v))
    return fwd, grad


def _relu_general(negative_slope, max_value, threshold):
    """Keras 3's relu(x, negative_slope, max_value, threshold), in its order of steps: x where
    x > threshold (plain relu when threshold is 0), clipped to [0, max_value], minus
    negative_slope * relu(threshold - x)."""
    def fwd(v):
        xp = same_device(v)
        pos = xp.where(v > threshold, v, 0) if threshold != 0 else xp.maximum(v, 0)
        if max_value is not None:
            pos = xp.clip(pos, 0, max_value)
        if negative_slope:
            pos = pos - negative_slope * xp.maximum(threshold - v, 0)
        return pos.astype(v.dtype, copy=False)

    def grad(g, v, y):
        xp = same_device(v)
        on = v > threshold if threshold != 0 else v > 0
        if max_value is not None:
            on &= (v > 0) & (v < max_value)
        d = xp.where(on, g, 0)
        if negative_slope:
            d = d + xp.where(v < threshold, g * negative_slope, 0)
        return d
    return fwd, grad


_RULES = {
    "gelu": _gelu_exact(),
    "silu": (lambda v: v * _sigmoid(v), lambda g, v, y: g * _sigmoid(v) * (1 + v * (1 - _sigmoid(v)))),
    "elu": _elu(1.0),
    "selu": _selu(),
    "softplus": (lambda v: same_device(v).logaddexp(v, 0), lambda g, v, y: g * _sigmoid(v)),
    "softsign": (lambda v: v / (1 + same_device(v).abs(v)), lambda g, v, y: g / (1 + same_device(v).abs(v)) ** 2),
    "leaky_relu": _leaky(0.2),
    "relu6": (lambda v: same_device(v).clip(v, 0, 6), lambda g, v, y: g * ((v > 0) & (v < 6))),
    "hard_sigmoid": (lambda v: same_device(v).clip(v / 6 + 0.5, 0, 1), lambda g, v, y: g * ((v > -3) & (v < 3)) / 6),
    "hard_silu": (lambda v: v * same_device(v).clip(v / 6 + 0.5, 0, 1),
                  lambda g, v, y: g * same_device(v).where(v < -3, 0, same_device(v).where(v > 3, 1, v / 3 + 0.5))),
    "exponential": (lambda v: same_device(v).exp(v), lambda g, v, y: g * y),
    "mish": _mish(),
}
_ALIASES = {"swish": "silu", "hard_swish": "hard_silu"}

# Every name an `activation=` argument accepts.
NAMES = KERNEL_ACTIVATIONS + tuple(_RULES) + tuple(_ALIASES)


def array_rule(name):
    """(fwd(v) -> y, grad(g, v, y) -> dv) on arrays for a non-kernel activation name."""
    return _RULES[_ALIASES.get(name, name)]


def canonical(name):
    """The name a config records (Keras writes 'silu' for swish, 'hard_silu' for hard_swish)."""
    return _ALIASES.get(name, name)


# ---------------------------------------------------------------------------- tensor functions
def _apply(x, rule):
    fwd, grad = rule
    return unary(x, lambda v: fwd(v).astype(v.dtype, copy=False), grad)


def linear(x):
    return x


def relu(x, negative_slope=0.0, max_value=None, threshold=0.0):
    if negative_slope == 0.0 and max_value is None and threshold == 0.0:
        return _nn.relu(x)
    return _apply(x, _relu_general(float(negative_slope), None if max_value is None else float(max_value),
                                   float(threshold)))


def sigmoid(x):
    return _nn.sigmoid(x)


def tanh(x):
    return _nn.tanh(x)


def softmax(x, axis=-1):
    return _nn.softmax(x, axis=axis)


def log_softmax(x, axis=-1):
    return _nn.log_softmax(x, axis=axis)


def gelu(x, approximate=False):
    """0.5 x (1 + erf(x / sqrt 2)); approximate=True: the tanh form."""
    return _apply(x, _gelu_tanh() if approximate else _RULES["gelu"])


def silu(x):
    return _apply(x, _RULES["silu"])


swish = silu


def elu(x, alpha=1.0):
    return _apply(x, _elu(float(alpha)))


def selu(x):
    return _apply(x, _RULES["selu"])


def softplus(x):
    return _apply(x, _RULES["softplus"])


def softsign(x):
    return _apply(x, _RULES["softsign"])


def leaky_relu(x, negative_slope=0.2):
    return _apply(x, _leaky(float(negative_slope)))


def relu6(x):
    return _apply(x, _RULES["relu6"])


def hard_sigmoid(x):
    return _apply(x, _RULES["hard_sigmoid"])


def hard_silu(x):
    return _apply(x, _RULES["hard_silu"])


hard_swish = hard_silu


def exponential(x):
    return _apply(x, _RULES["exponential"])


def mish(x):
    return _apply(x, _RULES["mish"])


_FUNCTIONS = {f.__name__: f for f in (linear, relu, sigmoid, tanh, softmax, log_softmax, gelu, silu, elu, selu,
                                      softplus, softsign, leaky_relu, relu6, hard_sigmoid, hard_silu,
                                      exponential, mish)}
_FUNCTIONS.update(swish=silu, hard_swish=hard_silu)


def get(identifier):
    """keras.activations.get: None -> linear, a name -> its function, a callable as it is."""
    if identifier is None:
        return linear
    if isinstance(identifier, dict):   # {"class_name": "function", "config": "relu", ...}
        identifier = identifier.get("config")
    if isinstance(identifier, str):
        fn = _FUNCTIONS.get(identifier)
        if fn is None:
            raise ValueError(f"unknown activation {identifier!r}; valid names: {', '.join(sorted(_FUNCTIONS))}")
        return fn
    if callable(identifier):
        return identifier
    raise ValueError(f"could not interpret activation identifier {identifier!r}")


def serialize(fn):
    name = getattr(fn, "__name__", None)
    if name not in _FUNCTIONS:
        raise ValueError(f"activation {fn!r} is not a kilnet.activations function")
    return name


def deserialize(config):
    return get(config)
