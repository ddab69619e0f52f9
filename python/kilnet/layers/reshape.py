"""Reshape and ZeroPadding2D: data movement only, no arithmetic.

Reshape returns a view (no copy), as Flatten does. ZeroPadding2D copies its input into the
middle of a reused zero-bordered buffer, and backward copies the middle of the gradient out:
plain array slicing (numpy here, cupy on the GPU) is already the fastest form of that copy, so
neither layer has a kernel of its own.
"""
from __future__ import annotations

import math

import numpy as np

from kilnet.layers.base import Layer

__all__ = ["Reshape", "ZeroPadding2D"]


class Reshape(Layer):
    """`Reshape(target_shape)`: each sample to target_shape (one entry may be -1, inferred)."""
    _moves_values = True   # any float dtype as it is (a bfloat16 policy converts nothing)

    def __init__(self, target_shape, **kwargs):
        super().__init__(**kwargs)
        who = f"Reshape {self.name!r}"
        try:
            target = tuple(target_shape)
        except TypeError:
            raise TypeError(f"{who}: target_shape must be a tuple of ints, got {target_shape!r}") from None
        if not target or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) for d in target) \
                or any(d < 1 and d != -1 for d in target) or sum(d == -1 for d in target) > 1:
            raise ValueError(f"{who}: target_shape must hold positive ints and at most one -1, got {target_shape!r}")
        self.target_shape = tuple(int(d) for d in target)

    def compute_output_shape(self, input_shape):
        size = math.prod(input_shape[1:]) if None not in input_shape[1:] else None
        known = math.prod(d for d in self.target_shape if d != -1)
        shape = self.target_shape
        if size is not None:
            if -1 in shape:
                if size % known:
                    raise ValueError(f"Reshape {self.name!r}: cannot reshape {tuple(input_shape[1:])} "
                                     f"({size} values) to {self.target_shape}")
                shape = tuple(size // known if d == -1 else d for d in shape)
            elif known != size:
                raise ValueError(f"Reshape {self.name!r}: cannot reshape {tuple(input_shape[1:])} "
                                 f"({size} values) to {self.target_shape} ({known} values)")
        return (input_shape[0], *shape)

    def forward(self, x, training=False):
        self._state()["shape"] = x.shape
        return x.reshape((x.shape[0],) + tuple(self.output_shape[1:]))

    def backward(self, dy, need_dx=True, need_dw=True):
        return dy.reshape(self._state()["shape"]) if need_dx else None

    def get_config(self):
        return {**super().get_config(), "target_shape": list(self.target_shape)}


class ZeroPadding2D(Layer):
    """`ZeroPadding2D(padding=(1, 1))`: rows of zeros above/below and columns left/right.

    padding: an int (all four sides), (rows, cols) (symmetric), or ((top, bottom), (left, right)).
    """

    def __init__(self, padding=(1, 1), data_format=None, **kwargs):
        super().__init__(**kwargs)
        who = f"ZeroPadding2D {self.name!r}"
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{who}: only data_format='channels_last' is supported, got {data_format!r}")
        self.padding = _padding_pairs(padding, who)

    def build(self, input_shape):
        if len(input_shape) != 4 or None in input_shape[1:]:
            raise ValueError(f"ZeroPadding2D {self.name!r}: expects inputs (batch, height, width, channels), "
                             f"got shape {input_shape}")

    def compute_output_shape(self, input_shape):
        (t, b), (l, r) = self.padding
        n, h, w, c = input_shape
        return (n, h + t + b, w + l + r, c)

    def forward(self, x, training=False):
        (t, b), (l, r) = self.padding
        n, h, w, c = x.shape
        y = self._buffer("y", (n, h + t + b, w + l + r, c))
        y[:, :t] = 0
        y[:, t + h:] = 0
        y[:, t:t + h, :l] = 0
        y[:, t:t + h, l + w:] = 0
        y[:, t:t + h, l:l + w] = x
        self._state()["shape"] = x.shape
        return y

    def backward(self, dy, need_dx=True, need_dw=True):
        if not need_dx:
            return None
        (t, _), (l, _) = self.padding
        n, h, w, c = self._state()["shape"]
        dx = self._buffer("dx", (n, h, w, c))
        dx[...] = dy[:, t:t + h, l:l + w]
        return dx

    def get_config(self):
        return {**super().get_config(), "padding": [list(p) for p in self.padding],
                "data_format": "channels_last"}


def _padding_pairs(padding, who):
    """Keras's three forms -> ((top, bottom), (left, right)) of non-negative ints."""
    def nonneg(v):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{who}: padding must hold non-negative ints, got {padding!r}")
        return int(v)
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
        p = nonneg(padding)
        return (p, p), (p, p)
    try:
        parts = tuple(padding)
    except TypeError:
        raise TypeError(f"{who}: padding must be an int, a pair, or a pair of pairs, got {padding!r}") from None
    if len(parts) != 2:
        raise ValueError(f"{who}: padding must be an int, a pair, or a pair of pairs, got {padding!r}")
    out = []
    for part in parts:
        if isinstance(part, (int, np.integer)) and not isinstance(part, bool):
            out.append((nonneg(part), nonneg(part)))
        else:
            try:
                pair = tuple(part)
            except TypeError:
                raise TypeError(f"{who}: padding must be an int, a pair, or a pair of pairs, got {padding!r}") from None
            if len(pair) != 2:
                raise ValueError(f"{who}: padding must be an int, a pair, or a pair of pairs, got {padding!r}")
            out.append((nonneg(pair[0]), nonneg(pair[1])))
    return tuple(out)
