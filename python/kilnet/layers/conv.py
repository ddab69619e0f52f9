"""Conv2D: channels-last 2-D convolution (kernel (kh, kw, in, out), as Keras stores it)."""
from __future__ import annotations

import numpy as np

from kilnet import initializers
from kilnet import regularizers as regularizers_mod
from kilnet.layers.activation import ActivatedLayer
from kilnet.layers.base import check_conv_geometry, normalize_tuple
from kilnet.layers.core import _refuse_unsupported

__all__ = ["Conv2D", "conv_output_length", "conv2d_input_grad"]


def conv2d_input_grad(k, dy, w, dx, strides, pad, dilation, act, y, x_like, dw_scratch):
    """dx = conv2d's input gradient alone (dx's shape is the convolution input's). The CPU
    module has conv2d_backward_input; on a module without it (the CUDA one) conv2d_backward runs
    with x_like (an array of the input's shape; its values only feed the weight gradient) and
    the weight gradient sent to dw_scratch() (a buffer of w's shape)."""
    if hasattr(k, "conv2d_backward_input"):
        k.conv2d_backward_input(dy, w, dx, strides, pad, dilation, act, y)
        return dx
    dw = dw_scratch()
    dw.fill(0.0)
    k.conv2d_backward(dy, x_like(), w, dx, dw, None, strides, pad, dilation, act, y)
    return dx
    dw = scratch() if scratch is not None else k_empty_like(dx, w)
    dw.fill(0.0)
    k.conv2d_backward(dy, dx, w, dx, dw, None, strides, pad, dilation, act, y)
    return dx


def conv_output_length(size, kernel, stride, dilation, padding):
    """Output length and top/left padding of one spatial axis, Keras's rules:
    'valid': floor((size - eff)/stride) + 1, no padding;
    'same' : ceil(size/stride), the padding split with the odd pixel at the bottom/right."""
    eff = (kernel - 1) * dilation + 1
    if padding == "valid":
        out = (size - eff) // stride + 1
        return out, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return out, total // 2


class Conv2D(ActivatedLayer):
    """2-D convolution over NHWC inputs.

    Args (Keras's): filters, kernel_size, strides=(1, 1), padding='valid' ('valid' or 'same'),
    dilation_rate=(1, 1), activation=None, use_bias=True, kernel_initializer='glorot_uniform',
    bias_initializer='zeros'.
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 dilation_rate=(1, 1), groups=1, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, **kwargs):
        super().__init__(activation=activation, **kwargs)
        who = f"Conv2D {self.name!r}"
        if not isinstance(filters, (int, np.integer)) or isinstance(filters, bool) or filters < 1:
            raise ValueError(f"{who}: filters must be a positive int, got {filters!r}")
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{who}: only data_format='channels_last' is supported, got {data_format!r}")
        if groups != 1:
            raise ValueError(f"{who}: groups={groups!r} is not supported (only 1)")
        padding = padding.lower() if isinstance(padding, str) else padding
        if padding not in ("valid", "same"):
            raise ValueError(f"{who}: padding must be 'valid' or 'same', got {padding!r}")
        _refuse_unsupported(self, activity_regularizer=activity_regularizer, kernel_constraint=kernel_constraint,
                            bias_constraint=bias_constraint)
        self.filters = int(filters)
        self.kernel_size = normalize_tuple(kernel_size, 2, "kernel_size", who)
        self.strides = normalize_tuple(strides, 2, "strides", who)
        self.dilation_rate = normalize_tuple(dilation_rate, 2, "dilation_rate", who)
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(f"{who}: strides > 1 together with dilation_rate > 1 is not supported (as in Keras)")
        self.padding = padding
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        # Penalties on the weights: the model adds them to the loss (kilnet.regularizers.penalties).
        self.kernel_regularizer = regularizers_mod.get(kernel_regularizer)
        self.bias_regularizer = regularizers_mod.get(bias_regularizer)

    def build(self, input_shape):
        if len(input_shape) != 4 or None in input_shape[1:]:
            raise ValueError(f"Conv2D {self.name!r}: expects inputs (batch, height, width, channels), "
                             f"got shape {input_shape}")
        self._geometry(input_shape)
        kh, kw = self.kernel_size
        init = self._initialize
        self._add_weight("kernel", (kh, kw, input_shape[-1], self.filters), self.kernel_initializer, initialize=init)
        if self.use_bias:
            self._add_weight("bias", (self.filters,), self.bias_initializer, initialize=init)

    def _geometry(self, input_shape):
        (p, ph), (q, pw) = (conv_output_length(input_shape[i + 1], self.kernel_size[i], self.strides[i],
                                               self.dilation_rate[i], self.padding) for i in range(2))
        if p < 1 or q < 1:
            raise ValueError(f"Conv2D {self.name!r}: input {input_shape[1:3]} is smaller than the "
                             f"kernel {self.kernel_size} (dilation {self.dilation_rate}) with padding='valid'")
        check_conv_geometry(f"Conv2D {self.name!r}", input_shape, (*self.kernel_size, input_shape[3], self.filters),
                            (input_shape[0], p, q, self.filters), self.strides, (ph, pw), self.dilation_rate)
        self._pq, self._pad = (p, q), (ph, pw)

    def compute_output_shape(self, input_shape):
        self._geometry(input_shape)
        return (input_shape[0], *self._pq, self.filters)

    # The activations the conv kernels fuse: applied as y is stored, and act'(y) applied to dy as
    # the backward kernels read it, so neither costs a pass over memory. Softmax stays separate.
    _FUSED = ("linear", "relu", "sigmoid", "tanh")

    def forward(self, x, training=False):
        if self.activation not in self._FUSED:
            return super().forward(x, training)
        y = self._conv_forward(x, self.activation)
        self._state()["y"] = y
        return y

    def backward(self, dy, need_dx=True, need_dw=True):
        if self.activation not in self._FUSED:
            return super().backward(dy, need_dx, need_dw)
        return self._conv_backward(dy, need_dx, need_dw, self.activation, self._state()["y"])

    def forward_linear(self, x, training=False):
        return self._conv_forward(x, "linear")

    def backward_linear(self, dz, need_dx=True, need_dw=True):
        return self._conv_backward(dz, need_dx, need_dw, "linear", None)

    def _conv_forward(self, x, act):
        z = self._buffer("z", (x.shape[0], *self._pq, self.filters))
        self._k.conv2d_forward(x, self.kernel, self.bias if self.use_bias else None, z,
                            self.strides, self._pad, self.dilation_rate, act)
        self._state()["x"] = x
        return z

    def _conv_backward(self, dy, need_dx, need_dw, act, y):
        x = self._state()["x"]
        dx = self._buffer("dx", x.shape) if need_dx else None
        if need_dw and self.trainable:
            self._k.conv2d_backward(dy, x, self.kernel, dx, self.dkernel,
                                 self.dbias if self.use_bias else None,
                                 self.strides, self._pad, self.dilation_rate, act, y)
        elif need_dx:   # input gradient only (frozen weights)
            conv2d_input_grad(self._k, dy, self.kernel, dx, self.strides, self._pad, self.dilation_rate, act, y,
                              lambda: x, lambda: self._buffer("dw_scratch", self.kernel.shape))
        return dx

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": list(self.kernel_size),
                "strides": list(self.strides), "padding": self.padding, "data_format": "channels_last",
                "dilation_rate": list(self.dilation_rate), "groups": 1, "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "kernel_regularizer": regularizers_mod.serialize(self.kernel_regularizer),
                "bias_regularizer": regularizers_mod.serialize(self.bias_regularizer), "activity_regularizer": None,
                "kernel_constraint": None, "bias_constraint": None}
