"""Pooling: MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D (channels-last).

Keras's semantics: 'valid' keeps only windows that fit, 'same' gives ceil(size/stride) outputs
and pads with the odd pixel at the bottom/right. Padded positions are never a maximum and are
not counted in an average (Keras 'same' averages over the real pixels only). Where a window
holds several equal maxima, the first in scan order (row, then column) takes the gradient, as in
PyTorch; the kernels recompute that position from the kept input, so nothing else is stored.
"""
from __future__ import annotations


from kilnet.layers.base import Layer, check_pool_geometry, normalize_tuple
from kilnet.layers.conv import conv_output_length

__all__ = ["MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D",
           "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D"]


def _channels_last(data_format, who):
    if data_format not in (None, "channels_last"):
        raise ValueError(f"{who}: only data_format='channels_last' is supported, got {data_format!r}")


def _image_input(input_shape, who):
    if len(input_shape) != 4 or None in input_shape[1:]:
        raise ValueError(f"{who}: expects inputs (batch, height, width, channels), got shape {input_shape}")


class _Pooling2D(Layer):
    """Shared by MaxPooling2D and AveragePooling2D: arguments, geometry, config."""

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", data_format=None, **kwargs):
        super().__init__(**kwargs)
        who = f"{type(self).__name__} {self.name!r}"
        _channels_last(data_format, who)
        padding = padding.lower() if isinstance(padding, str) else padding
        if padding not in ("valid", "same"):
            raise ValueError(f"{who}: padding must be 'valid' or 'same', got {padding!r}")
        self.pool_size = normalize_tuple(pool_size, 2, "pool_size", who)
        # Keras: strides=None means strides = pool_size (non-overlapping windows).
        self.strides = normalize_tuple(self.pool_size if strides is None else strides, 2, "strides", who)
        self.padding = padding

    def build(self, input_shape):
        _image_input(input_shape, f"{type(self).__name__} {self.name!r}")
        self._geometry(input_shape)

    def _geometry(self, input_shape):
        (p, ph), (q, pw) = (conv_output_length(input_shape[i + 1], self.pool_size[i], self.strides[i], 1,
                                               self.padding) for i in range(2))
        if p < 1 or q < 1:
            raise ValueError(f"{type(self).__name__} {self.name!r}: input {tuple(input_shape[1:3])} is "
                             f"smaller than the pool window {self.pool_size} with padding='valid'")
        check_pool_geometry(f"{type(self).__name__} {self.name!r}", input_shape, (input_shape[0], p, q, input_shape[3]),
                            self.pool_size, self.strides, (ph, pw))
        self._pq, self._pad = (p, q), (ph, pw)

    def compute_output_shape(self, input_shape):
        self._geometry(input_shape)
        return (input_shape[0], *self._pq, input_shape[3])

    def forward(self, x, training=False):
        y = self._buffer("y", (x.shape[0], *self._pq, x.shape[3]))
        self._pool_forward(x, y)
        self._state()["x"] = x
        return y

    def backward(self, dy, need_dx=True, need_dw=True):
        if not need_dx:
            return None
        x = self._state()["x"]
        dx = self._buffer("dx", x.shape)
        self._pool_backward(x, dy, dx)
        return dx

    def get_config(self):
        return {**super().get_config(), "pool_size": list(self.pool_size), "padding": self.padding,
                "strides": list(self.strides), "data_format": "channels_last"}


class MaxPooling2D(_Pooling2D):
    """Max over each pool_size window: `MaxPooling2D(pool_size=(2, 2), strides=None, padding='valid')`."""

    def _pool_forward(self, x, y):
        self._k.maxpool2d_forward(x, y, self.pool_size, self.strides, self._pad)

    def _pool_backward(self, x, dy, dx):
        self._k.maxpool2d_backward(x, dy, dx, self.pool_size, self.strides, self._pad)


class AveragePooling2D(_Pooling2D):
    """Mean over each window's real pixels: `AveragePooling2D(pool_size=(2, 2), strides=None, padding='valid')`."""

    def _pool_forward(self, x, y):
        self._k.avgpool2d_forward(x, y, self.pool_size, self.strides, self._pad)

    def _pool_backward(self, x, dy, dx):
        self._k.avgpool2d_backward(dy, dx, self.pool_size, self.strides, self._pad)


class GlobalAveragePooling2D(Layer):
    """Mean over height and width: (batch, H, W, C) -> (batch, C), or (batch, 1, 1, C) with
    keepdims=True."""

    def __init__(self, data_format=None, keepdims=False, **kwargs):
        super().__init__(**kwargs)
        _channels_last(data_format, f"GlobalAveragePooling2D {self.name!r}")
        self.keepdims = bool(keepdims)

    def build(self, input_shape):
        _image_input(input_shape, f"GlobalAveragePooling2D {self.name!r}")

    def compute_output_shape(self, input_shape):
        n, c = input_shape[0], input_shape[3]
        return (n, 1, 1, c) if self.keepdims else (n, c)

    def forward(self, x, training=False):
        y = self._buffer("y", (x.shape[0], x.shape[3]))
        self._k.global_avgpool2d_forward(x, y)
        self._state()["shape"] = x.shape
        return y.reshape(x.shape[0], 1, 1, x.shape[3]) if self.keepdims else y

    def backward(self, dy, need_dx=True, need_dw=True):
        if not need_dx:
            return None
        shape = self._state()["shape"]
        dx = self._buffer("dx", shape)
        self._k.global_avgpool2d_backward(dy.reshape(shape[0], shape[3]), dx)
        return dx

    def get_config(self):
        return {**super().get_config(), "data_format": "channels_last", "keepdims": self.keepdims}


# Keras's short aliases (the class name a file records is always the long one).
MaxPool2D = MaxPooling2D
AvgPool2D = AveragePooling2D
GlobalAvgPool2D = GlobalAveragePooling2D
