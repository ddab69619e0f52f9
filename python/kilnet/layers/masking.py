"""Masking: marks padded time steps (every feature == mask_value) so that the layers after it
skip them, as Keras's Masking layer.

output = inputs * any(inputs != mask_value, axis=-1)[..., None]; compute_mask returns that
(batch, timesteps) bool mask. The engine does not carry masks from layer to layer on its own
yet: pass `mask=masking.compute_mask(x)` to the recurrent layer (or Bidirectional) explicitly.
"""
from __future__ import annotations

import numpy as np

from kilnet.engine.tensor import Tensor
from kilnet.layers.base import Layer

__all__ = ["Masking"]


class Masking(Layer):
    """Args (Keras's): mask_value=0.0."""

    def __init__(self, mask_value=0.0, **kwargs):
        super().__init__(**kwargs)
        if isinstance(mask_value, bool) or not isinstance(mask_value, (int, float, np.integer, np.floating)):
            raise ValueError(f"Masking {self.name!r}: mask_value must be a number, got {mask_value!r}")
        self.mask_value = float(mask_value)
        self.supports_masking = True

    def _keep(self, x):
        """(..., 1) float32: 1 where some feature differs from mask_value."""
        return (x != np.float32(self.mask_value)).any(axis=-1, keepdims=True).astype(np.float32)

    def compute_mask(self, inputs, mask=None):
        """The (batch, timesteps) bool mask of `inputs` (an array or Tensor)."""
        x = inputs.value if isinstance(inputs, Tensor) else inputs
        if not hasattr(x, "ndim"):
            x = np.asarray(x, np.float32)
        if x.ndim < 2:
            raise ValueError(f"Masking {self.name!r}: expects inputs (batch, timesteps, ...), got shape {x.shape}")
        return (x != np.float32(self.mask_value)).any(axis=-1)

    def forward(self, x, training=False):
        if x.ndim < 2:
            raise ValueError(f"Masking {self.name!r}: expects inputs (batch, timesteps, ...), got shape {x.shape}")
        keep = self._keep(x)
        self._state()["keep"] = keep
        return x * keep

    def backward(self, dy, need_dx=True, need_dw=True):
        return dy * self._state()["keep"] if need_dx else None

    def get_config(self):
        return {**super().get_config(), "mask_value": self.mask_value}
