"""Conv2DTranspose: the transposed 2-D convolution, channels-last, on the conv2d kernels.

A transposed convolution is the input gradient of a convolution: with Keras's kernel
(kh, kw, filters, in_channels) read as a conv2d kernel RSCK (C = filters, K = in_channels),
    forward:  y  = conv2d_backward_input(dy=x, w)       (x plays the convolution's output)
    backward: dx = conv2d_forward(dy_out, w)            (the convolution itself)
              dw += conv2d weight gradient with x = dy_out, dy = x
              db += sum of dy_out over batch, rows and columns.
The padding follows Keras 3 (keras/src/backend/common/backend_utils.py, the jax rule): Keras
pads the stride-dilated input by (left, right); the convolution seen from the output side has
top/left padding eff - 1 - left, and the output size is (in - 1) * s + left + right - eff + 2.
"""
from __future__ import annotations

import numpy as np

from kilnet import initializers
from kilnet import regularizers as regularizers_mod
from kilnet.layers.activation import ActivatedLayer
from kilnet.layers.base import check_conv_geometry, normalize_tuple
from kilnet.layers.conv import conv2d_input_grad
from kilnet.layers.core import _refuse_unsupported

__all__ = ["Conv2DTranspose", "Convolution2DTranspose", "conv_transpose_geometry"]


def conv_transpose_geometry(size, kernel, stride, dilation, padding, output_padding):
    """(output size, top/left padding of the equivalent convolution) along one axis."""
    eff = (kernel - 1) * dilation + 1
    if padding == "valid":
        op = max(eff, stride) - eff if output_padding is None else output_padding
        left, right = eff - 1, eff - 1 + op
    else:
        pad_len = stride + eff - 2 if output_padding is None else eff + eff % 2 - 2 + output_padding
        left = min(pad_len // 2 + pad_len % 2, eff - 1)
        right = pad_len - left
    return (size - 1) * stride + left + right - eff + 2, eff - 1 - left


class Conv2DTranspose(ActivatedLayer):
    """Transposed 2-D convolution over NHWC inputs.

    Args (Keras 3's): filters, kernel_size, strides=(1, 1), padding='valid' ('valid'|'same'),
    output_padding=None, data_format=None (channels_last only), dilation_rate=(1, 1),
    activation=None, use_bias=True, kernel_initializer='glorot_uniform', bias_initializer='zeros',
    kernel_regularizer=None, bias_regularizer=None. Weights: kernel (kh, kw, filters, in), bias
    (filters,).
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", output_padding=None,
                 data_format=None, dilation_rate=(1, 1), activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", kernel_regularizer=None,
                 bias_regularizer=None, activity_regularizer=None, kernel_constraint=None, bias_constraint=None,
                 **kwargs):
        super().__init__(activation=activation, **kwargs)
        who = f"Conv2DTranspose {self.name!r}"
        if not isinstance(filters, (int, np.integer)) or isinstance(filters, bool) or filters < 1:
            raise ValueError(f"{who}: filters must be a positive int, got {filters!r}")
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{who}: only data_format='channels_last' is supported, got {data_format!r}")
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
        if output_padding is not None:
            if isinstance(output_padding, (int, np.integer)) and not isinstance(output_padding, bool):
                output_padding = (int(output_padding),) * 2
            try:
                output_padding = tuple(int(v) for v in output_padding)
            except (TypeError, ValueError):
                raise TypeError(f"{who}: output_padding must be None, an int or 2 ints, got {output_padding!r}") from None
            if len(output_padding) != 2 or any(v < 0 or v >= s for v, s in zip(output_padding, self.strides)):
                raise ValueError(f"{who}: output_padding must be 2 ints, each >= 0 and < its stride "
                                 f"{self.strides}, got {output_padding!r}")
        self.output_padding = output_padding
        self.padding = padding
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers_mod.get(kernel_regularizer)
        self.bias_regularizer = regularizers_mod.get(bias_regularizer)

    def build(self, input_shape):
        if len(input_shape) != 4 or None in input_shape[1:]:
            raise ValueError(f"Conv2DTranspose {self.name!r}: expects inputs (batch, height, width, channels), "
                             f"got shape {input_shape}")
        self._geometry(input_shape)
        kh, kw = self.kernel_size
        init = self._initialize
        self._add_weight("kernel", (kh, kw, self.filters, input_shape[-1]), self.kernel_initializer, initialize=init)
        if self.use_bias:
            self._add_weight("bias", (self.filters,), self.bias_initializer, initialize=init)

    def _geometry(self, input_shape):
        op = self.output_padding or (None, None)
        (ho, ph), (wo, pw) = (conv_transpose_geometry(input_shape[i + 1], self.kernel_size[i], self.strides[i],
                                                      self.dilation_rate[i], self.padding, op[i]) for i in range(2))
        if ho < 1 or wo < 1:
            raise ValueError(f"Conv2DTranspose {self.name!r}: output size {(ho, wo)} from input "
                             f"{tuple(input_shape[1:3])}; it must be at least 1x1")
        # The kernels run the convolution seen from the output side: its input is this layer's output.
        check_conv_geometry(f"Conv2DTranspose {self.name!r}", (input_shape[0], ho, wo, self.filters),
                            (*self.kernel_size, self.filters, input_shape[3]), input_shape, self.strides, (ph, pw),
                            self.dilation_rate)
        self._out, self._pad = (ho, wo), (ph, pw)

    def compute_output_shape(self, input_shape):
        self._geometry(input_shape)
        return (input_shape[0], *self._out, self.filters)

    def forward_linear(self, x, training=False):
        z = self._buffer("z", (x.shape[0], *self._out, self.filters))
        conv2d_input_grad(self._k, x, self.kernel, z, self.strides, self._pad, self.dilation_rate, "linear", None,
                          lambda: self._zeros("x_like", z.shape), lambda: self._buffer("dw_scratch", self.kernel.shape))
        if self.use_bias:
            z += self.bias
        self._state()["x"] = x
        return z

    def _zeros(self, key, shape):
        buf = self._buffer(key, shape)
        buf.fill(0.0)
        return buf

    def backward_linear(self, dz, need_dx=True, need_dw=True):
        x = self._state()["x"]
        if need_dw and self.trainable:
            self._k.conv2d_backward(x, dz, self.kernel, None, self.dkernel, None, self.strides, self._pad,
                                    self.dilation_rate, "linear", None)
            if self.use_bias:
                self._k.bias_backward(dz.reshape(-1, self.filters), self.dbias)
        if not need_dx:
            return None
        dx = self._buffer("dx", x.shape)
        self._k.conv2d_forward(dz, self.kernel, None, dx, self.strides, self._pad, self.dilation_rate, "linear")
        return dx

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": list(self.kernel_size),
                "strides": list(self.strides), "padding": self.padding,
                "output_padding": None if self.output_padding is None else list(self.output_padding),
                "data_format": "channels_last", "dilation_rate": list(self.dilation_rate),
                "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "kernel_regularizer": regularizers_mod.serialize(self.kernel_regularizer),
                "bias_regularizer": regularizers_mod.serialize(self.bias_regularizer), "activity_regularizer": None,
                "kernel_constraint": None, "bias_constraint": None}


Convolution2DTranspose = Conv2DTranspose
