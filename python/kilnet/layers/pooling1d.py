"""MaxPooling1D and AveragePooling1D (channels-last), on the pool2d kernels: (batch, steps,
channels) is viewed as (batch, 1, steps, channels) and the window as (1, pool_size), both
views, so the 1-D layers share the 2-D kernels' semantics ('same' pads with the odd step on the
right; padded steps are never a maximum and are not counted in an average)."""
from __future__ import annotations

from kilnet.layers.base import Layer, check_pool_geometry, normalize_tuple
from kilnet.layers.conv import conv_output_length

__all__ = ["MaxPooling1D", "AveragePooling1D", "MaxPool1D", "AvgPool1D"]


class _Pooling1D(Layer):
    def __init__(self, pool_size=2, strides=None, padding="valid", data_format=None, **kwargs):
        super().__init__(**kwargs)
        who = f"{type(self).__name__} {self.name!r}"
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{who}: only data_format='channels_last' is supported, got {data_format!r}")
        padding = padding.lower() if isinstance(padding, str) else padding
        if padding not in ("valid", "same"):
            raise ValueError(f"{who}: padding must be 'valid' or 'same', got {padding!r}")
        self.pool_size = normalize_tuple(pool_size, 1, "pool_size", who)
        # Keras: strides=None means strides = pool_size (non-overlapping windows).
        self.strides = normalize_tuple(self.pool_size if strides is None else strides, 1, "strides", who)
        self.padding = padding

    def build(self, input_shape):
        if len(input_shape) != 3 or None in input_shape[1:]:
            raise ValueError(f"{type(self).__name__} {self.name!r}: expects inputs (batch, steps, channels), "
                             f"got shape {input_shape}")
        self._geometry(input_shape)

    def _geometry(self, input_shape):
        out, left = conv_output_length(input_shape[1], self.pool_size[0], self.strides[0], 1, self.padding)
        if out < 1:
            raise ValueError(f"{type(self).__name__} {self.name!r}: {input_shape[1]} steps are fewer than the "
                             f"pool window {self.pool_size[0]} with padding='valid'")
        check_pool_geometry(f"{type(self).__name__} {self.name!r}", (input_shape[0], 1, input_shape[1], input_shape[2]),
                            (input_shape[0], 1, out, input_shape[2]), (1, self.pool_size[0]), (1, self.strides[0]),
                            (0, left))
        self._out, self._pad = out, (0, left)
        self._window, self._strides2 = (1, self.pool_size[0]), (1, self.strides[0])

    def compute_output_shape(self, input_shape):
        self._geometry(input_shape)
        return (input_shape[0], self._out, input_shape[2])

    def forward(self, x, training=False):
        n, _, c = x.shape
        y = self._buffer("y", (n, self._out, c))
        self._pool_forward(x.reshape(n, 1, *x.shape[1:]), y.reshape(n, 1, self._out, c))
        self._state()["x"] = x
        return y

    def backward(self, dy, need_dx=True, need_dw=True):
        if not need_dx:
            return None
        x = self._state()["x"]
        n = x.shape[0]
        dx = self._buffer("dx", x.shape)
        self._pool_backward(x.reshape(n, 1, *x.shape[1:]), dy.reshape(n, 1, *dy.shape[1:]),
                            dx.reshape(n, 1, *x.shape[1:]))
        return dx

    def get_config(self):
        return {**super().get_config(), "pool_size": list(self.pool_size), "padding": self.padding,
                "strides": list(self.strides), "data_format": "channels_last"}


class MaxPooling1D(_Pooling1D):
    """Max over each window of steps: `MaxPooling1D(pool_size=2, strides=None, padding='valid')`."""

    def _pool_forward(self, x4, y4):
        self._k.maxpool2d_forward(x4, y4, self._window, self._strides2, self._pad)

    def _pool_backward(self, x4, dy4, dx4):
        self._k.maxpool2d_backward(x4, dy4, dx4, self._window, self._strides2, self._pad)


class AveragePooling1D(_Pooling1D):
    """Mean over each window's real steps: `AveragePooling1D(pool_size, strides=None, padding='valid')`
    (pool_size has no default, as in Keras 3)."""

    def __init__(self, pool_size, strides=None, padding="valid", data_format=None, **kwargs):
        super().__init__(pool_size, strides, padding, data_format, **kwargs)

    def _pool_forward(self, x4, y4):
        self._k.avgpool2d_forward(x4, y4, self._window, self._strides2, self._pad)

    def _pool_backward(self, x4, dy4, dx4):
        self._k.avgpool2d_backward(dy4, dx4, self._window, self._strides2, self._pad)


MaxPool1D = MaxPooling1D
AvgPool1D = AveragePooling1D
