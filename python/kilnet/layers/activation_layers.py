"""The activation layers of Keras 3: ReLU, LeakyReLU, ELU, PReLU, Softmax.

ReLU, LeakyReLU, ELU and PReLU are fused elementwise layers (forward/backward on arrays, with
the formulas of kilnet.activations); the default ReLU runs on the relu kernel. Softmax is
written with kilnet.ops (its last-axis softmax is a kernel) and honours Keras's `mask`.
"""
from __future__ import annotations

import numbers

import numpy as np

from kilnet import activations
from kilnet import initializers
from kilnet import regularizers as regularizers_mod
from kilnet.layers.base import Layer
from kilnet.layers.core import _refuse_unsupported

__all__ = ["ReLU", "LeakyReLU", "ELU", "PReLU", "Softmax"]


def _number(value, name, who, allow_none=False):
    if value is None and allow_none:
        return None
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{who}: {name} must be a number >= 0{' or None' if allow_none else ''}, got {value!r}")
    return float(value)


class _Elementwise(Layer):
    """y = f(x) elementwise with the rule (fwd(v), grad(g, v, y)) of self._rule()."""

    def compute_output_shape(self, input_shape):
        return input_shape

    def forward(self, x, training=False):
        y = self._buffer("y", x.shape)
        y[...] = self._rule()[0](x)
        st = self._state()
        st["x"], st["y"] = x, y
        return y

    def backward(self, dy, need_dx=True, need_dw=True):
        if not need_dx:
            return None
        st = self._state()
        dx = self._buffer("dx", dy.shape)
        dx[...] = self._rule()[1](dy, st["x"], st["y"])
        return dx


class ReLU(_Elementwise):
    """`ReLU(max_value=None, negative_slope=0.0, threshold=0.0)`: x above the threshold (capped
    at max_value), negative_slope * (x - threshold) below it."""

    def __init__(self, max_value=None, negative_slope=0.0, threshold=0.0, **kwargs):
        super().__init__(**kwargs)
        who = f"ReLU {self.name!r}"
        self.max_value = _number(max_value, "max_value", who, allow_none=True)
        self.negative_slope = _number(negative_slope, "negative_slope", who)
        self.threshold = _number(threshold, "threshold", who)
        self._plain = self.max_value is None and self.negative_slope == 0.0 and self.threshold == 0.0
        self._general = activations._relu_general(self.negative_slope, self.max_value, self.threshold)

    def _rule(self):
        return self._general

    def forward(self, x, training=False):
        if not self._plain:
            return super().forward(x, training)
        y = self._buffer("y", x.shape)
        self._k.activation_forward("relu", x, y)
        self._state()["y"] = y
        return y

    def backward(self, dy, need_dx=True, need_dw=True):
        if not self._plain:
            return super().backward(dy, need_dx, need_dw)
        if not need_dx:
            return None
        dx = self._buffer("dx", dy.shape)
        self._k.activation_backward("relu", self._state()["y"], dy, dx)
        return dx

    def get_config(self):
        return {**super().get_config(), "max_value": self.max_value, "negative_slope": self.negative_slope,
                "threshold": self.threshold}


class LeakyReLU(_Elementwise):
    """`LeakyReLU(negative_slope=0.3)`: x for x > 0, negative_slope * x otherwise."""

    def __init__(self, negative_slope=0.3, **kwargs):
        if "alpha" in kwargs:   # the Keras 2 name, which Keras 3 still reads
            negative_slope = kwargs.pop("alpha")
        super().__init__(**kwargs)
        self.negative_slope = _number(negative_slope, "negative_slope", f"LeakyReLU {self.name!r}")
        self._r = activations._leaky(self.negative_slope)

    def _rule(self):
        return self._r

    def get_config(self):
        return {**super().get_config(), "negative_slope": self.negative_slope}


class ELU(_Elementwise):
    """`ELU(alpha=1.0)`: x for x > 0, alpha * (exp(x) - 1) otherwise."""

    def __init__(self, alpha=1.0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(alpha, numbers.Real) or isinstance(alpha, bool):
            raise ValueError(f"ELU {self.name!r}: alpha must be a number, got {alpha!r}")
        self.alpha = float(alpha)
        self._r = activations._elu(self.alpha)

    def _rule(self):
        return self._r

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha}


class PReLU(Layer):
    """`PReLU(alpha_initializer='Zeros', alpha_regularizer=None, alpha_constraint=None,
    shared_axes=None)`: x for x > 0, alpha * x otherwise, with a trainable alpha of shape
    input_shape[1:] (1 along each of shared_axes)."""

    def __init__(self, alpha_initializer="Zeros", alpha_regularizer=None, alpha_constraint=None,
                 shared_axes=None, **kwargs):
        super().__init__(**kwargs)
        who = f"PReLU {self.name!r}"
        _refuse_unsupported(self, alpha_constraint=alpha_constraint)
        self.alpha_initializer = initializers.get(alpha_initializer)
        self.alpha_regularizer = regularizers_mod.get(alpha_regularizer)
        if shared_axes is None:
            self.shared_axes = None
        else:
            axes = [shared_axes] if isinstance(shared_axes, (int, np.integer)) else list(shared_axes)
            if any(isinstance(a, bool) or not isinstance(a, (int, np.integer)) or a < 1 for a in axes):
                raise ValueError(f"{who}: shared_axes must be positive axis numbers (1 = the first axis after "
                                 f"the batch), got {shared_axes!r}")
            self.shared_axes = sorted(int(a) for a in axes)

    def build(self, input_shape):
        who = f"PReLU {self.name!r}"
        shape = list(input_shape[1:])
        for a in self.shared_axes or ():
            if a > len(shape):
                raise ValueError(f"{who}: shared axis {a} is out of range for inputs of shape {input_shape}")
            shape[a - 1] = 1
        if None in shape:
            raise ValueError(f"{who}: needs known sizes on the axes alpha covers, got inputs of shape {input_shape}")
        self._add_weight("alpha", shape, self.alpha_initializer, initialize=self._initialize)

    def compute_output_shape(self, input_shape):
        return input_shape

    def forward(self, x, training=False):
        y = self._buffer("y", x.shape)
        xp = self._xp
        xp.multiply(x, xp.where(x > 0, 1.0, self.alpha).astype(np.float32, copy=False), out=y)
        self._state()["x"] = x
        return y

    def backward(self, dy, need_dx=True, need_dw=True):
        x = self._state()["x"]
        xp = self._xp
        neg = x <= 0
        if need_dw and self.trainable:
            g = xp.where(neg, dy * x, 0.0)
            # sum over the batch and the shared axes: every axis where alpha has size 1
            axes = (0,) + tuple(i + 1 for i, s in enumerate(self.alpha.shape) if s == 1 and x.shape[i + 1] != 1)
            self.dalpha += g.sum(axis=axes, keepdims=True).reshape(self.alpha.shape).astype(np.float32)
        if not need_dx:
            return None
        dx = self._buffer("dx", x.shape)
        dx[...] = xp.where(neg, dy * self.alpha, dy)
        return dx

    def get_config(self):
        return {**super().get_config(), "alpha_initializer": initializers.serialize(self.alpha_initializer),
                "alpha_regularizer": regularizers_mod.serialize(self.alpha_regularizer), "alpha_constraint": None,
                "shared_axes": self.shared_axes}


class Softmax(Layer):
    """`Softmax(axis=-1)`: softmax over axis (an int or a tuple); `layer(x, mask=m)` gives the
    masked positions (m false, or <= 0.5) probability 0, as Keras 3."""

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        if isinstance(axis, (list, tuple)):
            axis = [int(a) for a in axis]
        elif not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
            raise ValueError(f"Softmax {self.name!r}: axis must be an int or a list of ints, got {axis!r}")
        self.axis = axis if isinstance(axis, list) else int(axis)

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, inputs, mask=None):
        from kilnet import ops
        axis = tuple(self.axis) if isinstance(self.axis, list) else self.axis
        if mask is None:
            return ops.softmax(inputs, axis=axis)
        keep = ops.greater(ops.cast(mask, "float32"), 0.5)
        x = ops.where(keep, inputs, -1e9)
        return ops.where(keep, ops.softmax(x, axis=axis), 0.0)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}
