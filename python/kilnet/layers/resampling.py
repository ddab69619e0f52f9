"""UpSampling1D, UpSampling2D and Cropping2D (channels-last): data movement and, for bilinear
up-sampling, a small interpolation matrix per axis. Array operations (numpy here, CuPy on the
GPU) are already the fastest form of these copies, so there is no kernel of their own.

Bilinear up-sampling matches Keras 3 (ops.image.resize, half-pixel centres, antialias off):
output i along an axis samples input position (i + 0.5) / size - 0.5 with the triangle
kernel, the weights of positions outside the input dropped and the rest renormalized (which is
clamping at the edges). So y = A_h · x · A_w^T per channel, and the backward pass uses A^T.
"""
from __future__ import annotations

import numpy as np

from kilnet.layers.base import Layer, normalize_tuple

__all__ = ["UpSampling1D", "UpSampling2D", "Cropping2D"]


def _channels_last(data_format, who):
    if data_format not in (None, "channels_last"):
        raise ValueError(f"{who}: only data_format='channels_last' is supported, got {data_format!r}")


def _expect_rank(layer, input_shape, rank, what):
    if len(input_shape) != rank or None in input_shape[1:]:
        raise ValueError(f"{type(layer).__name__} {layer.name!r}: expects inputs {what}, got shape {input_shape}")


class UpSampling1D(Layer):
    """`UpSampling1D(size=2)`: each step repeated `size` times along the steps axis."""

    def __init__(self, size=2, **kwargs):
        super().__init__(**kwargs)
        self.size = normalize_tuple(size, 1, "size", f"UpSampling1D {self.name!r}")[0]

    def build(self, input_shape):
        _expect_rank(self, input_shape, 3, "(batch, steps, channels)")

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1] * self.size, input_shape[2])

    def forward(self, x, training=False):
        n, t, c = x.shape
        y = self._buffer("y", (n, t * self.size, c))
        y.reshape(n, t, self.size, c)[...] = x[:, :, None, :]
        return y

    def backward(self, dy, need_dx=True, need_dw=True):
        if not need_dx:
            return None
        n, ts, c = dy.shape
        dx = self._buffer("dx", (n, ts // self.size, c))
        dy.reshape(n, ts // self.size, self.size, c).sum(axis=2, out=dx)
        return dx

    def get_config(self):
        return {**super().get_config(), "size": self.size}


_MAX_BILINEAR = 1 << 25   # values in one bilinear interpolation matrix


def _bilinear_matrix(n_in, size):
    """(n_in * size, n_in) weights of Keras/jax bilinear resizing by an integer factor."""
    out = np.arange(n_in * size, dtype=np.float64)
    pos = (out + 0.5) / size - 0.5
    j = np.arange(n_in, dtype=np.float64)
    a = np.maximum(0.0, 1.0 - np.abs(pos[:, None] - j[None, :]))
    return (a / a.sum(axis=1, keepdims=True)).astype(np.float32)


class UpSampling2D(Layer):
    """`UpSampling2D(size=(2, 2), interpolation='nearest')`: rows repeated size[0] times and
    columns size[1] times ('nearest'), or bilinear interpolation ('bilinear')."""

    def __init__(self, size=(2, 2), data_format=None, interpolation="nearest", **kwargs):
        super().__init__(**kwargs)
        who = f"UpSampling2D {self.name!r}"
        _channels_last(data_format, who)
        self.size = normalize_tuple(size, 2, "size", who)
        if interpolation not in ("nearest", "bilinear"):
            raise ValueError(f"{who}: interpolation must be 'nearest' or 'bilinear' (kilnet has no bicubic or "
                             f"lanczos resizing), got {interpolation!r}")
        self.interpolation = interpolation

    def build(self, input_shape):
        _expect_rank(self, input_shape, 4, "(batch, height, width, channels)")
        if self.interpolation == "bilinear":
            # The dense interpolation matrices are (H*size, H) and (W*size, W): refused before
            # they are allocated when they would be huge (a file's input shape could ask for TBs).
            for n, s in zip(input_shape[1:3], self.size):
                if n is not None and n * s * n > _MAX_BILINEAR:
                    raise ValueError(f"UpSampling2D {self.name!r}: bilinear upsampling of {n} pixels by {s} needs "
                                     f"a {n * s} x {n} interpolation matrix; at most {_MAX_BILINEAR} values")
            self._ah = _bilinear_matrix(input_shape[1], self.size[0])   # host arrays
            self._aw = _bilinear_matrix(input_shape[2], self.size[1])

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        return (n, h * self.size[0], w * self.size[1], c)

    def _matrices(self, h, w):
        if self._ah.shape[1] != h or self._aw.shape[1] != w:   # called on another image size
            self._ah = _bilinear_matrix(h, self.size[0])
            self._aw = _bilinear_matrix(w, self.size[1])
        return self._xp.asarray(self._ah), self._xp.asarray(self._aw)   # on the layer's device

    def forward(self, x, training=False):
        n, h, w, c = x.shape
        sh, sw = self.size
        y = self._buffer("y", (n, h * sh, w * sw, c))
        if self.interpolation == "nearest":
            y.reshape(n, h, sh, w, sw, c)[...] = x[:, :, None, :, None, :]
        else:
            ah, aw = self._matrices(h, w)
            y[...] = self._xp.einsum("ph,nhwc,qw->npqc", ah, x, aw, optimize=True)
        self._state()["shape"] = x.shape
        return y

    def backward(self, dy, need_dx=True, need_dw=True):
        if not need_dx:
            return None
        n, h, w, c = self._state()["shape"]
        sh, sw = self.size
        dx = self._buffer("dx", (n, h, w, c))
        if self.interpolation == "nearest":
            dy.reshape(n, h, sh, w, sw, c).sum(axis=(2, 4), out=dx)
        else:
            ah, aw = self._matrices(h, w)
            dx[...] = self._xp.einsum("ph,npqc,qw->nhwc", ah, dy, aw, optimize=True)
        return dx

    def get_config(self):
        return {**super().get_config(), "size": list(self.size), "data_format": "channels_last",
                "interpolation": self.interpolation}


def _crop_pairs(cropping, who):
    """Keras's forms: an int (all sides), (rows, cols) (symmetric) or ((top, bottom), (left, right))."""
    def nonneg(v):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{who}: cropping must hold non-negative ints, got {cropping!r}")
        return int(v)
    if isinstance(cropping, (int, np.integer)) and not isinstance(cropping, bool):
        v = nonneg(cropping)
        return (v, v), (v, v)
    try:
        parts = tuple(cropping)
        if len(parts) != 2:
            raise TypeError
        out = []
        for part in parts:
            if isinstance(part, (int, np.integer)) and not isinstance(part, bool):
                out.append((nonneg(part), nonneg(part)))
            else:
                pair = tuple(part)
                if len(pair) != 2:
                    raise TypeError
                out.append((nonneg(pair[0]), nonneg(pair[1])))
    except TypeError:
        raise ValueError(f"{who}: cropping must be an int, a pair, or a pair of pairs, got {cropping!r}") from None
    return tuple(out)


class Cropping2D(Layer):
    """`Cropping2D(cropping=((0, 0), (0, 0)))`: rows cut from the top/bottom and columns from the
    left/right of each image."""

    def __init__(self, cropping=((0, 0), (0, 0)), data_format=None, **kwargs):
        super().__init__(**kwargs)
        who = f"Cropping2D {self.name!r}"
        _channels_last(data_format, who)
        self.cropping = _crop_pairs(cropping, who)

    def build(self, input_shape):
        _expect_rank(self, input_shape, 4, "(batch, height, width, channels)")
        self.compute_output_shape(input_shape)

    def compute_output_shape(self, input_shape):
        (t, b), (l, r) = self.cropping
        n, h, w, c = input_shape
        if h is not None and h - t - b < 1 or w is not None and w - l - r < 1:
            raise ValueError(f"Cropping2D {self.name!r}: cropping {self.cropping} leaves nothing of an input of "
                             f"{h}x{w}")
        return (n, None if h is None else h - t - b, None if w is None else w - l - r, c)

    def forward(self, x, training=False):
        (t, b), (l, r) = self.cropping
        n, h, w, c = x.shape
        y = self._buffer("y", (n, h - t - b, w - l - r, c))
        y[...] = x[:, t:h - b, l:w - r]
        self._state()["shape"] = x.shape
        return y

    def backward(self, dy, need_dx=True, need_dw=True):
        if not need_dx:
            return None
        (t, b), (l, r) = self.cropping
        n, h, w, c = self._state()["shape"]
        dx = self._buffer("dx", (n, h, w, c))
        dx.fill(0.0)
        dx[:, t:h - b, l:w - r] = dy
        return dx

    def get_config(self):
        return {**super().get_config(), "cropping": [list(p) for p in self.cropping], "data_format": "channels_last"}
