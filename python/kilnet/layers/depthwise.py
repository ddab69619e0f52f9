"""DepthwiseConv2D and SeparableConv2D (channels-last), on the depthwise2d kernels
(csrc/cpu/depthwise.cpp); SeparableConv2D's pointwise step is a 1x1 conv2d.

Keras 3's weights: DepthwiseConv2D kernel (kh, kw, in, depth_multiplier) and bias
(in * depth_multiplier,), output channel c * depth_multiplier + m; SeparableConv2D
depthwise_kernel (kh, kw, in, depth_multiplier), pointwise_kernel (1, 1, in * depth_multiplier,
filters) and bias (filters,). Strides, padding and dilation apply to the depthwise step.
"""
from __future__ import annotations

import numpy as np

from kilnet import initializers
from kilnet import regularizers as regularizers_mod
from kilnet.layers.activation import ActivatedLayer
from kilnet.layers.base import check_conv_geometry, normalize_tuple
from kilnet.layers.conv import conv_output_length
from kilnet.layers.core import _refuse_unsupported

__all__ = ["DepthwiseConv2D", "SeparableConv2D", "SeparableConvolution2D"]


def _positive_int(value, name, who):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{who}: {name} must be a positive int, got {value!r}")
    return int(value)


class _DepthwiseBase(ActivatedLayer):
    """Arguments and geometry shared by the two layers."""

    def _init_geometry(self, kernel_size, strides, padding, data_format, dilation_rate, depth_multiplier):
        who = f"{type(self).__name__} {self.name!r}"
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{who}: only data_format='channels_last' is supported, got {data_format!r}")
        padding = padding.lower() if isinstance(padding, str) else padding
        if padding not in ("valid", "same"):
            raise ValueError(f"{who}: padding must be 'valid' or 'same', got {padding!r}")
        self.kernel_size = normalize_tuple(kernel_size, 2, "kernel_size", who)
        self.strides = normalize_tuple(strides, 2, "strides", who)
        self.dilation_rate = normalize_tuple(dilation_rate, 2, "dilation_rate", who)
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(f"{who}: strides > 1 together with dilation_rate > 1 is not supported (as in Keras)")
        self.padding = padding
        self.depth_multiplier = _positive_int(depth_multiplier, "depth_multiplier", who)

    def _check_input(self, input_shape):
        if len(input_shape) != 4 or None in input_shape[1:]:
            raise ValueError(f"{type(self).__name__} {self.name!r}: expects inputs (batch, height, width, channels), "
                             f"got shape {input_shape}")

    def _geometry(self, input_shape):
        (p, ph), (q, pw) = (conv_output_length(input_shape[i + 1], self.kernel_size[i], self.strides[i],
                                               self.dilation_rate[i], self.padding) for i in range(2))
        if p < 1 or q < 1:
            raise ValueError(f"{type(self).__name__} {self.name!r}: input {tuple(input_shape[1:3])} is smaller "
                             f"than the kernel {self.kernel_size} (dilation {self.dilation_rate}) with padding='valid'")
        check_conv_geometry(f"{type(self).__name__} {self.name!r}", input_shape,
                            (*self.kernel_size, input_shape[3], self.depth_multiplier),
                            (input_shape[0], p, q, self.depth_multiplier), self.strides, (ph, pw), self.dilation_rate)
        self._pq, self._pad = (p, q), (ph, pw)

    def _depthwise_forward(self, x, w, b, key):
        if not hasattr(self._k, "depthwise2d_forward"):
            raise NotImplementedError(f"{type(self).__name__} {self.name!r}: the depthwise kernels are CPU-only "
                                      f"for now (no CUDA kernel); keep this model on the CPU")
        t = self._buffer(key, (x.shape[0], *self._pq, x.shape[3] * self.depth_multiplier))
        self._k.depthwise2d_forward(x, w, b, t, self.strides, self._pad, self.dilation_rate)
        return t

    def _depthwise_backward(self, dt, x, w, dw, db, need_dx):
        dx = self._buffer("dx", x.shape) if need_dx else None
        self._k.depthwise2d_backward(dt, x, w, dx, dw, db, self.strides, self._pad, self.dilation_rate)
        return dx

    def _geometry_config(self):
        return {"kernel_size": list(self.kernel_size), "strides": list(self.strides), "padding": self.padding,
                "data_format": "channels_last", "dilation_rate": list(self.dilation_rate),
                "depth_multiplier": self.depth_multiplier}


class DepthwiseConv2D(_DepthwiseBase):
    """Each input channel convolved with its own depth_multiplier filters.

    Args (Keras 3's): kernel_size, strides=(1, 1), padding='valid', depth_multiplier=1,
    data_format=None, dilation_rate=(1, 1), activation=None, use_bias=True,
    depthwise_initializer='glorot_uniform', bias_initializer='zeros', depthwise_regularizer=None,
    bias_regularizer=None.
    """

    def __init__(self, kernel_size, strides=(1, 1), padding="valid", depth_multiplier=1, data_format=None,
                 dilation_rate=(1, 1), activation=None, use_bias=True, depthwise_initializer="glorot_uniform",
                 bias_initializer="zeros", depthwise_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, depthwise_constraint=None, bias_constraint=None, **kwargs):
        super().__init__(activation=activation, **kwargs)
        self._init_geometry(kernel_size, strides, padding, data_format, dilation_rate, depth_multiplier)
        _refuse_unsupported(self, activity_regularizer=activity_regularizer,
                            depthwise_constraint=depthwise_constraint, bias_constraint=bias_constraint)
        self.use_bias = bool(use_bias)
        self.depthwise_initializer = initializers.get(depthwise_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers_mod.get(depthwise_regularizer)   # on weight "kernel"
        self.bias_regularizer = regularizers_mod.get(bias_regularizer)

    def build(self, input_shape):
        self._check_input(input_shape)
        self._geometry(input_shape)
        c, init = input_shape[-1], self._initialize
        self._add_weight("kernel", (*self.kernel_size, c, self.depth_multiplier), self.depthwise_initializer,
                         initialize=init)
        if self.use_bias:
            self._add_weight("bias", (c * self.depth_multiplier,), self.bias_initializer, initialize=init)

    def compute_output_shape(self, input_shape):
        self._geometry(input_shape)
        return (input_shape[0], *self._pq, input_shape[3] * self.depth_multiplier)

    def forward_linear(self, x, training=False):
        self._state()["x"] = x
        return self._depthwise_forward(x, self.kernel, self.bias if self.use_bias else None, "z")

    def backward_linear(self, dz, need_dx=True, need_dw=True):
        x = self._state()["x"]
        if need_dw and self.trainable:
            return self._depthwise_backward(dz, x, self.kernel, self.dkernel, self.dbias if self.use_bias else None,
                                            need_dx)
        if not need_dx:
            return None
        scratch = self._buffer("dw_scratch", self.kernel.shape)   # frozen: the weight gradient is dropped
        scratch.fill(0.0)
        return self._depthwise_backward(dz, x, self.kernel, scratch, None, True)

    def get_config(self):
        return {**super().get_config(), **self._geometry_config(), "use_bias": self.use_bias,
                "depthwise_initializer": initializers.serialize(self.depthwise_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "depthwise_regularizer": regularizers_mod.serialize(self.kernel_regularizer),
                "bias_regularizer": regularizers_mod.serialize(self.bias_regularizer),
                "activity_regularizer": None, "depthwise_constraint": None, "bias_constraint": None}


class SeparableConv2D(_DepthwiseBase):
    """A depthwise convolution followed by a 1x1 (pointwise) convolution to `filters` channels.

    Args (Keras 3's): filters, kernel_size, strides=(1, 1), padding='valid', data_format=None,
    dilation_rate=(1, 1), depth_multiplier=1, activation=None, use_bias=True,
    depthwise_initializer='glorot_uniform', pointwise_initializer='glorot_uniform',
    bias_initializer='zeros', depthwise_regularizer=None, pointwise_regularizer=None,
    bias_regularizer=None.
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 dilation_rate=(1, 1), depth_multiplier=1, activation=None, use_bias=True,
                 depthwise_initializer="glorot_uniform", pointwise_initializer="glorot_uniform",
                 bias_initializer="zeros", depthwise_regularizer=None, pointwise_regularizer=None,
                 bias_regularizer=None, activity_regularizer=None, depthwise_constraint=None,
                 pointwise_constraint=None, bias_constraint=None, **kwargs):
        super().__init__(activation=activation, **kwargs)
        self.filters = _positive_int(filters, "filters", f"SeparableConv2D {self.name!r}")
        self._init_geometry(kernel_size, strides, padding, data_format, dilation_rate, depth_multiplier)
        _refuse_unsupported(self, activity_regularizer=activity_regularizer, depthwise_constraint=depthwise_constraint,
                            pointwise_constraint=pointwise_constraint, bias_constraint=bias_constraint)
        self.use_bias = bool(use_bias)
        self.depthwise_initializer = initializers.get(depthwise_initializer)
        self.pointwise_initializer = initializers.get(pointwise_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.depthwise_kernel_regularizer = regularizers_mod.get(depthwise_regularizer)
        self.pointwise_kernel_regularizer = regularizers_mod.get(pointwise_regularizer)
        self.bias_regularizer = regularizers_mod.get(bias_regularizer)

    def build(self, input_shape):
        self._check_input(input_shape)
        self._geometry(input_shape)
        c, m, init = input_shape[-1], self.depth_multiplier, self._initialize
        self._add_weight("depthwise_kernel", (*self.kernel_size, c, m), self.depthwise_initializer, initialize=init)
        self._add_weight("pointwise_kernel", (1, 1, c * m, self.filters), self.pointwise_initializer,
                         initialize=init)
        if self.use_bias:
            self._add_weight("bias", (self.filters,), self.bias_initializer, initialize=init)

    def compute_output_shape(self, input_shape):
        self._geometry(input_shape)
        return (input_shape[0], *self._pq, self.filters)

    def forward_linear(self, x, training=False):
        t = self._depthwise_forward(x, self.depthwise_kernel, None, "t")
        z = self._buffer("z", (x.shape[0], *self._pq, self.filters))
        self._k.conv2d_forward(t, self.pointwise_kernel, self.bias if self.use_bias else None, z, (1, 1), (0, 0),
                               (1, 1), "linear")
        st = self._state()
        st["x"], st["t"] = x, t
        return z

    def backward_linear(self, dz, need_dx=True, need_dw=True):
        st = self._state()
        x, t = st["x"], st["t"]
        train = need_dw and self.trainable
        if not train and not need_dx:
            return None
        dt = self._buffer("dt", t.shape)
        if train:
            self._k.conv2d_backward(dz, t, self.pointwise_kernel, dt, self.dpointwise_kernel,
                                    self.dbias if self.use_bias else None, (1, 1), (0, 0), (1, 1), "linear", None)
            return self._depthwise_backward(dt, x, self.depthwise_kernel, self.ddepthwise_kernel, None, need_dx)
        scratch = self._buffer("pw_scratch", self.pointwise_kernel.shape)
        scratch.fill(0.0)
        self._k.conv2d_backward(dz, t, self.pointwise_kernel, dt, scratch, None, (1, 1), (0, 0), (1, 1), "linear",
                                None)
        scratch = self._buffer("dw_scratch", self.depthwise_kernel.shape)
        scratch.fill(0.0)
        return self._depthwise_backward(dt, x, self.depthwise_kernel, scratch, None, True)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, **self._geometry_config(), "use_bias": self.use_bias,
                "depthwise_initializer": initializers.serialize(self.depthwise_initializer),
                "pointwise_initializer": initializers.serialize(self.pointwise_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "depthwise_regularizer": regularizers_mod.serialize(self.depthwise_kernel_regularizer),
                "pointwise_regularizer": regularizers_mod.serialize(self.pointwise_kernel_regularizer),
                "bias_regularizer": regularizers_mod.serialize(self.bias_regularizer),
                "activity_regularizer": None, "depthwise_constraint": None, "pointwise_constraint": None,
                "bias_constraint": None}


SeparableConvolution2D = SeparableConv2D
