"""GlobalAveragePooling1D, GlobalMaxPooling1D, GlobalMaxPooling2D (channels-last), on the pool2d
kernels: a global max is one max-pooling window over all the steps (or rows x columns), a global
average the global_avgpool2d kernel over the steps. GlobalAveragePooling1D also takes Keras's
`mask` (batch, steps): masked steps are left out of the mean (written with ops; the tape
differentiates it), and a row with every step masked gives NaN, as in Keras 3 (0 / 0).
"""
from __future__ import annotations

from kilnet.layers.base import Layer, fused_call

__all__ = ["GlobalAveragePooling1D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalAvgPool1D",
           "GlobalMaxPool1D", "GlobalMaxPool2D"]


class _GlobalPooling(Layer):
    _rank = 1   # spatial axes: 1 (steps) or 2 (rows, columns)

    def __init__(self, data_format=None, keepdims=False, **kwargs):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{type(self).__name__} {self.name!r}: only data_format='channels_last' is "
                             f"supported, got {data_format!r}")
        self.keepdims = bool(keepdims)

    def build(self, input_shape):
        if len(input_shape) != self._rank + 2 or None in input_shape[1:]:
            what = "(batch, steps, channels)" if self._rank == 1 else "(batch, height, width, channels)"
            raise ValueError(f"{type(self).__name__} {self.name!r}: expects inputs {what}, got shape {input_shape}")

    def compute_output_shape(self, input_shape):
        n, c = input_shape[0], input_shape[-1]
        return (n, *(1,) * self._rank, c) if self.keepdims else (n, c)

    def _image(self, a):
        """a as (batch, H, W, channels): steps become (1, steps)."""
        return a.reshape(a.shape[0], 1, *a.shape[1:]) if self._rank == 1 else a

    def _shape_out(self, y, n, c):
        return y.reshape(n, *(1,) * self._rank, c) if self.keepdims else y.reshape(n, c)

    def get_config(self):
        return {**super().get_config(), "data_format": "channels_last", "keepdims": self.keepdims}


class _GlobalMax(_GlobalPooling):
    def forward(self, x, training=False):
        x4 = self._image(x)
        n, h, w, c = x4.shape
        y = self._buffer("y", (n, 1, 1, c))
        self._k.maxpool2d_forward(x4, y, (h, w), (h, w), (0, 0))
        self._state()["x"] = x
        return self._shape_out(y, n, c)

    def backward(self, dy, need_dx=True, need_dw=True):
        if not need_dx:
            return None
        x = self._state()["x"]
        x4 = self._image(x)
        n, h, w, c = x4.shape
        dx = self._buffer("dx", x.shape)
        self._k.maxpool2d_backward(x4, dy.reshape(n, 1, 1, c), self._image(dx), (h, w), (h, w), (0, 0))
        return dx


class GlobalMaxPooling1D(_GlobalMax):
    """Max over the steps: (batch, steps, channels) -> (batch, channels), (batch, 1, channels) with
    keepdims=True."""
    _rank = 1


class GlobalMaxPooling2D(_GlobalMax):
    """Max over height and width: (batch, H, W, channels) -> (batch, channels), or
    (batch, 1, 1, channels) with keepdims=True."""
    _rank = 2


class GlobalAveragePooling1D(_GlobalPooling):
    """Mean over the steps: (batch, steps, channels) -> (batch, channels), (batch, 1, channels) with
    keepdims=True; `layer(x, mask=m)` with m (batch, steps) averages only where m is true."""
    _rank = 1

    def call(self, inputs, mask=None, training=None):
        if mask is None:
            return fused_call(self, inputs, training)
        from kilnet import ops
        m = ops.cast(mask, "float32")
        if tuple(m.shape) != tuple(inputs.shape[:2]):
            raise ValueError(f"GlobalAveragePooling1D {self.name!r}: mask must have shape (batch, steps) = "
                             f"{tuple(inputs.shape[:2])}, got {tuple(m.shape)}")
        m = ops.expand_dims(m, 2)
        return ops.sum(inputs * m, axis=1, keepdims=self.keepdims) / ops.sum(m, axis=1, keepdims=self.keepdims)

    def forward(self, x, training=False):
        n, t, c = x.shape
        y = self._buffer("y", (n, c))
        self._k.global_avgpool2d_forward(self._image(x), y)
        self._state()["shape"] = x.shape
        return self._shape_out(y, n, c)

    def backward(self, dy, need_dx=True, need_dw=True):
        if not need_dx:
            return None
        shape = self._state()["shape"]
        dx = self._buffer("dx", shape)
        self._k.global_avgpool2d_backward(dy.reshape(shape[0], shape[2]), self._image(dx))
        return dx


GlobalAvgPool1D = GlobalAveragePooling1D
GlobalMaxPool1D = GlobalMaxPooling1D
GlobalMaxPool2D = GlobalMaxPooling2D
