"""Activations: the `activation=` argument of Dense/Conv1D/Conv2D/... and the Activation layer.

ActivatedLayer splits a layer into its linear part (forward_linear/backward_linear) and the
activation applied in place on top of it. The split lets a model fuse the last softmax (or
sigmoid) with the cross-entropy loss: it calls forward_linear to get logits and hands the
loss's gradient straight to backward_linear.

linear/relu/sigmoid/tanh/softmax run on the elementwise kernels in place (y overwrites z); the
other Keras names (gelu, silu, elu, ...: kilnet.activations.NAMES) apply their array rule into a
second buffer and keep z, since their gradient needs the input.
"""
from __future__ import annotations

import numpy as np

from kilnet import activations as _activations
from kilnet.backend import kernels_for
from kilnet.engine import precision
from kilnet.engine.state import call_state
from kilnet.engine.tape import record
from kilnet.engine.tensor import Tensor
from kilnet.layers.base import Layer, fused_call

__all__ = ["Activation", "ActivatedLayer", "ACTIVATIONS", "activated_output", "get_activation"]

ACTIVATIONS = _activations.NAMES


def get_activation(activation) -> str:
    """Validate an activation identifier (a Keras name, or a keras/kilnet activation function);
    None means linear (Keras's default). Returns the name a config records."""
    if activation is None:
        return "linear"
    if isinstance(activation, dict) and activation.get("class_name") == "function":
        activation = activation.get("config")   # Keras 3's serialized form of a function
    if callable(activation) and getattr(activation, "__name__", None) in ACTIVATIONS:
        return _activations.canonical(activation.__name__)
    if not isinstance(activation, str):
        raise TypeError(f"activation must be one of {', '.join(ACTIVATIONS)} (a string), got {activation!r}")
    name = activation.lower()
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; valid names: {', '.join(ACTIVATIONS)}")
    return _activations.canonical(name)


def act_forward_inplace(name, z):
    """Apply the activation to z in place and return it."""
    if name == "softmax":
        kernels_for(z).softmax_forward(z, z)
    elif name != "linear":
        kernels_for(z).activation_forward(name, z, z)
    return z


def act_backward_inplace(name, y, dy):
    """Turn dy (gradient wrt the activation's output y) into the gradient wrt its input, in place."""
    if name == "softmax":
        kernels_for(y).softmax_backward(y, dy, dy)
    elif name != "linear":
        kernels_for(y).activation_backward(name, y, dy, dy)
    return dy


class _Activated(Tensor):
    """activation(logits), computed on first read: in fit a fused cross-entropy reads only the
    logits (`_keras_logits`), so the softmax is not computed twice per step."""
    __slots__ = ("_act", "_z", "_buf")

    def __init__(self, act, z, buf):
        Tensor.__init__(self, None)
        self._act, self._z, self._buf = act, z, buf
        self._keras_logits = (act, z)

    @property
    def value(self):
        v = self._value
        if v is None:
            y = self._buf
            y[...] = self._z.value
            v = self._value = act_forward_inplace(self._act, y)
        return v


def activated_output(layer, z, st):
    """The output of a softmax or sigmoid layer given its linear part z (a Tensor): computed on
    first read, its logits kept for a cross-entropy loss to fuse with (st: the call's state,
    which holds the output buffer)."""
    n = z.value.shape[0]
    y = st.get("act")
    if y is None or y.shape[1:] != z.value.shape[1:] or y.shape[0] < n:
        y = st["act"] = layer._xp.empty(z.value.shape, np.float32)
    out = _Activated(layer.activation, z, y[:n])
    name = layer.activation
    record((z,), (out,), lambda g, needs: (act_backward_inplace(name, out.value, g),))
    return out


class ActivatedLayer(Layer):
    """A layer whose output is activation(linear part)."""

    def __init__(self, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.activation = get_activation(activation)

    def forward_linear(self, x, training=False):
        raise NotImplementedError

    def backward_linear(self, dz, need_dx=True, need_dw=True):
        raise NotImplementedError

    def call(self, inputs, training=None):
        """softmax and sigmoid outputs stay apart from their logits, so a cross-entropy loss
        can fuse with the logits (the tensor remembers them, as Keras's _keras_logits)."""
        if self.activation not in ("softmax", "sigmoid"):
            return fused_call(self, inputs, training)
        st = call_state(self)
        z = fused_call(self, inputs, training, self.forward_linear, self.backward_linear, st)
        return activated_output(self, z, st)

    def forward(self, x, training=False):
        z = self.forward_linear(x, training)
        st = self._state()
        if self.activation in _activations.KERNEL_ACTIVATIONS:
            y = st["y"] = act_forward_inplace(self.activation, z)
            return y
        fwd = _activations.array_rule(self.activation)[0]
        z16 = type(z) is np.ndarray and precision.is_bf16(z.dtype) and getattr(fwd, "takes_bf16", False)
        takes_out = getattr(fwd, "takes_out", False) and type(z) is np.ndarray and (z.dtype == np.float32 or z16)
        # the kernel writes the buffer itself (GELU: no temporary, no copy); a layer computing
        # natively in bfloat16 (Dense) gets its bfloat16 output from it, rounded once (from its
        # bfloat16 pre-activation when the kernel takes one: Dense(gelu))
        low = takes_out and (z16 or (self._low == "bfloat16" and self._computes_low_natively()))
        y = self._buffer("act_out16", z.shape, precision.np_dtype("bfloat16")) if low \
            else self._buffer("act_out", z.shape)
        if takes_out:
            fwd(z, out=y)
        else:
            y[...] = fwd(z)
        st["z"], st["y"] = z, y
        return y

    def backward(self, dy, need_dx=True, need_dw=True):
        st = self._state()
        if self.activation in _activations.KERNEL_ACTIVATIONS:
            return self.backward_linear(act_backward_inplace(self.activation, st["y"], dy), need_dx, need_dw)
        rule, z = _activations.array_rule(self.activation)[1], st["z"]
        if getattr(rule, "takes_out", False) and type(z) is np.ndarray and precision.is_bf16(z.dtype) \
                and type(dy) is np.ndarray and dy.dtype == np.float32:
            # a bfloat16 pre-activation (mixed-precision Dense(gelu)): dz rounded once to
            # bfloat16, the operand its dW and dx GEMMs take (half the bytes, written once, read twice)
            dz = rule(dy, z, st["y"], out=self._buffer("dz16", z.shape, z.dtype))
            return self.backward_linear(dz, need_dx, need_dw)
        dz = rule(dy, z, st["y"])
        return self.backward_linear(self._xp.ascontiguousarray(dz, dtype=np.float32), need_dx, need_dw)

    def get_config(self):
        return {**super().get_config(), "activation": self.activation}


class Activation(ActivatedLayer):
    """Applies an activation to its input: `Activation('relu')`."""
    supports_masking = True   # a mask on the input passes to the output (Keras)

    def __init__(self, activation, **kwargs):
        super().__init__(activation=activation, **kwargs)

    def forward_linear(self, x, training=False):
        # The activation runs in place, so copy into our own buffer (x belongs to the layer below).
        z = self._buffer("z", x.shape)
        z[...] = x
        return z

    def backward_linear(self, dz, need_dx=True, need_dw=True):
        return dz if need_dx else None
