"""Rescaling: y = x * scale + offset (Keras 3's preprocessing layer, usable inside a model).
scale and offset are floats, or arrays broadcast against the input (e.g. one per channel)."""
from __future__ import annotations

import numpy as np

from kilnet.layers.base import Layer

__all__ = ["Rescaling"]


def _value(v, name):
    """A float, or a float32 array; Keras's {"class_name": "__numpy__", ...} form is read too."""
    if isinstance(v, dict) and v.get("class_name") == "__numpy__":
        v = (v.get("config") or {}).get("value")
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
        return float(v)
    try:
        arr = np.asarray(v, dtype=np.float32)
    except (TypeError, ValueError):
        raise TypeError(f"Rescaling: {name} must be a number or an array of numbers, got {v!r}") from None
    return float(arr) if arr.ndim == 0 else arr


def _config(v):
    return v if isinstance(v, float) else v.tolist()   # a list, as Keras writes a list it was given


class Rescaling(Layer):
    """`Rescaling(scale, offset=0.0)`: e.g. Rescaling(1/255) maps [0, 255] pixels to [0, 1]."""

    def __init__(self, scale, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = _value(scale, "scale")
        self.offset = _value(offset, "offset")

    def compute_output_shape(self, input_shape):
        return input_shape

    def _on_device(self, v):
        return v if isinstance(v, float) else self._xp.asarray(v)

    def forward(self, x, training=False):
        y = self._buffer("y", x.shape)   # a scale/offset that would enlarge x's shape fails here, clearly
        y[...] = x * self._on_device(self.scale) + self._on_device(self.offset)
        return y

    def backward(self, dy, need_dx=True, need_dw=True):
        if not need_dx:
            return None
        dx = self._buffer("dx", dy.shape)
        dx[...] = dy * self._on_device(self.scale)
        return dx

    def get_config(self):
        return {**super().get_config(), "scale": _config(self.scale), "offset": _config(self.offset)}
