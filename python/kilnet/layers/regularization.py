"""Dropout: inverted dropout, active only in training.

In training each element is kept with probability 1 - rate and scaled by 1/(1 - rate), so
inference needs no rescaling; in inference the layer passes its input through. The mask is
drawn by the kernel from a seed taken from kilnet.utils.get_rng() (or from the layer's own
generator when seed= is given), so set_random_seed makes training repeatable, and the layer keeps
the mask so backward multiplies the gradient by exactly the mask forward applied.
"""
from __future__ import annotations

import math

import numpy as np


from kilnet.layers.base import Layer
from kilnet.utils import get_rng

__all__ = ["Dropout"]


class Dropout(Layer):
    """`Dropout(rate, noise_shape=None, seed=None)`: zero a fraction `rate` of the inputs in training."""
    supports_masking = True   # a mask on the input passes to the output (Keras)

    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        who = f"Dropout {self.name!r}"
        if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
            raise TypeError(f"{who}: rate must be a number in [0, 1), got {rate!r}")
        if not (math.isfinite(rate) and 0 <= rate < 1):
            raise ValueError(f"{who}: rate must be in [0, 1), got {rate!r}")
        if noise_shape is not None:
            raise ValueError(f"{who}: noise_shape={noise_shape!r} is not supported yet (only None)")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise ValueError(f"{who}: seed must be a non-negative int or None, got {seed!r}")
        self.rate = float(rate)
        self.seed = None if seed is None else int(seed)
        self._seed_rng = None if seed is None else np.random.default_rng(self.seed)

    def forward(self, x, training=False):
        st = self._state()
        if not training or self.rate == 0.0:
            st["mask"] = None
            return x
        mask = self._buffer("mask", x.shape)
        y = self._buffer("y", x.shape)
        rng = self._seed_rng if self._seed_rng is not None else get_rng()
        self._k.dropout_forward(x, mask, y, self.rate, int(rng.integers(0, 2**63)))
        st["mask"] = mask
        return y

    def backward(self, dy, need_dx=True, need_dw=True):
        if not need_dx:
            return None
        mask = self._state().get("mask")
        if mask is None:
            return dy
        dx = self._buffer("dx", dy.shape)
        self._k.dropout_backward(mask, dy, dx)
        return dx

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed, "noise_shape": None}
