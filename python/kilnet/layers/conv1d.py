"""Conv1D: channels-last 1-D convolution over (batch, steps, channels), kernel (k, in, filters).

It runs on the conv2d kernels: (B, T, C) is viewed as an image (B, 1, T, C) and the kernel as
(1, k, C, F), both views (no copy). The conv2d kernels take dilation and a left padding with
any right padding up to the window, which covers 'valid', 'same' (odd pixel on the right) and
'causal' (dilation * (k - 1) zeros on the left only, so step t sees inputs <= t).
"""
from __future__ import annotations

import numpy as np

from kilnet import initializers
from kilnet import regularizers as regularizers_mod
from kilnet.layers.base import check_conv_geometry, normalize_tuple
from kilnet.layers.conv import Conv2D, conv2d_input_grad, conv_output_length
from kilnet.layers.core import _refuse_unsupported
from kilnet.layers.activation import ActivatedLayer

__all__ = ["Conv1D", "Convolution1D"]


class Conv1D(Conv2D):
    """1-D convolution over (batch, steps, channels) inputs.

    Args (Keras 3's): filters, kernel_size, strides=1, padding='valid' ('valid', 'same' or
    'causal'), data_format=None (channels_last only), dilation_rate=1, groups=1 (only 1),
    activation=None, use_bias=True, kernel_initializer='glorot_uniform', bias_initializer='zeros',
    kernel_regularizer=None, bias_regularizer=None. Weights: kernel (kernel_size, in, filters),
    bias (filters,).
    """

    def __init__(self, filters, kernel_size, strides=1, padding="valid", data_format=None, dilation_rate=1,
                 groups=1, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, kernel_constraint=None, bias_constraint=None, **kwargs):
        ActivatedLayer.__init__(self, activation=activation, **kwargs)   # Conv2D's checks are 2-D
        who = f"Conv1D {self.name!r}"
        if not isinstance(filters, (int, np.integer)) or isinstance(filters, bool) or filters < 1:
            raise ValueError(f"{who}: filters must be a positive int, got {filters!r}")
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{who}: only data_format='channels_last' is supported, got {data_format!r}")
        if groups != 1:
            raise ValueError(f"{who}: groups={groups!r} is not supported (only 1)")
        padding = padding.lower() if isinstance(padding, str) else padding
        if padding not in ("valid", "same", "causal"):
            raise ValueError(f"{who}: padding must be 'valid', 'same' or 'causal', got {padding!r}")
        _refuse_unsupported(self, activity_regularizer=activity_regularizer, kernel_constraint=kernel_constraint,
                            bias_constraint=bias_constraint)
        self.filters = int(filters)
        self.kernel_size = normalize_tuple(kernel_size, 1, "kernel_size", who)
        self.strides = normalize_tuple(strides, 1, "strides", who)
        self.dilation_rate = normalize_tuple(dilation_rate, 1, "dilation_rate", who)
        if self.strides[0] > 1 and self.dilation_rate[0] > 1:
            raise ValueError(f"{who}: strides > 1 together with dilation_rate > 1 is not supported (as in Keras)")
        self.padding = padding
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers_mod.get(kernel_regularizer)
        self.bias_regularizer = regularizers_mod.get(bias_regularizer)
        # The conv2d kernels' arguments for the (B, 1, T, C) view.
        self._strides2 = (1, self.strides[0])
        self._dilation2 = (1, self.dilation_rate[0])

    def build(self, input_shape):
        if len(input_shape) != 3 or None in input_shape[1:]:
            raise ValueError(f"Conv1D {self.name!r}: expects inputs (batch, steps, channels) with known steps "
                             f"and channels, got shape {input_shape}")
        self._geometry(input_shape)
        init = self._initialize
        self._add_weight("kernel", (self.kernel_size[0], input_shape[-1], self.filters), self.kernel_initializer,
                         initialize=init)
        if self.use_bias:
            self._add_weight("bias", (self.filters,), self.bias_initializer, initialize=init)

    def _geometry(self, input_shape):
        steps, k, s, d = input_shape[1], self.kernel_size[0], self.strides[0], self.dilation_rate[0]
        if self.padding == "causal":   # Keras: pad d*(k-1) on the left, then 'valid'
            out, left = (steps - 1) // s + 1, d * (k - 1)
        else:
            out, left = conv_output_length(steps, k, s, d, self.padding)
        if out < 1:
            raise ValueError(f"Conv1D {self.name!r}: {steps} steps are fewer than the kernel {k} "
                             f"(dilation {d}) with padding='valid'")
        check_conv_geometry(f"Conv1D {self.name!r}", (input_shape[0], 1, steps, input_shape[2]),
                            (1, k, input_shape[2], self.filters), (input_shape[0], 1, out, self.filters),
                            (1, s), (0, left), (1, d))
        self._out_steps, self._pad = out, (0, left)

    def compute_output_shape(self, input_shape):
        self._geometry(input_shape)
        return (input_shape[0], self._out_steps, self.filters)

    def _kernel4(self, w):
        return w.reshape(1, *w.shape)   # (k, C, F) -> (1, k, C, F): a view

    def _conv_forward(self, x, act):
        n = x.shape[0]
        z = self._buffer("z", (n, self._out_steps, self.filters))
        self._k.conv2d_forward(x.reshape(n, 1, *x.shape[1:]), self._kernel4(self.kernel),
                               self.bias if self.use_bias else None, z.reshape(n, 1, *z.shape[1:]),
                               self._strides2, self._pad, self._dilation2, act)
        self._state()["x"] = x
        return z

    def _conv_backward(self, dy, need_dx, need_dw, act, y):
        x = self._state()["x"]
        n = x.shape[0]
        x4, dy4 = x.reshape(n, 1, *x.shape[1:]), dy.reshape(n, 1, *dy.shape[1:])
        y4 = None if y is None else y.reshape(dy4.shape)
        dx = self._buffer("dx", x.shape) if need_dx else None
        dx4 = None if dx is None else dx.reshape(x4.shape)
        if need_dw and self.trainable:
            self._k.conv2d_backward(dy4, x4, self._kernel4(self.kernel), dx4, self._kernel4(self.dkernel),
                                    self.dbias if self.use_bias else None, self._strides2, self._pad,
                                    self._dilation2, act, y4)
        elif need_dx:
            conv2d_input_grad(self._k, dy4, self._kernel4(self.kernel), dx4, self._strides2, self._pad,
                              self._dilation2, act, y4, lambda: x4,
                              lambda: self._buffer("dw_scratch", self._kernel4(self.kernel).shape))
        return dx

    def get_config(self):
        cfg = super().get_config()
        cfg.update(kernel_size=list(self.kernel_size), strides=list(self.strides),
                   dilation_rate=list(self.dilation_rate))
        return cfg


Convolution1D = Conv1D
