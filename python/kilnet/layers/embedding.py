"""Embedding: integer ids to rows of a trainable matrix, with Keras 3's arguments and layout.

One weight, "embeddings", of shape (input_dim, output_dim). The input is integer ids of any
shape (int32/int64 kept, other integers widened, floats cast to int32 as Keras does); the output
has shape ids.shape + (output_dim,). An id outside [0, input_dim) raises ValueError naming it.
The weight gradient is a deterministic scatter-add (the same bits at any thread count).
"""
from __future__ import annotations

import warnings

import numpy as np

from kilnet import initializers
from kilnet import regularizers as regularizers_mod
from kilnet.engine.tensor import Tensor
from kilnet.layers.base import Layer
from kilnet.layers.core import _refuse_unsupported

__all__ = ["Embedding"]


class Embedding(Layer):
    """`Embedding(input_dim, output_dim, embeddings_initializer="uniform", mask_zero=False, ...)`."""

    _int_inputs = True
    _overwrites_grads = True   # the step's first backward writes every row of dembeddings

    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform", embeddings_regularizer=None,
                 embeddings_constraint=None, mask_zero=False, weights=None, lora_rank=None, lora_alpha=None,
                 activity_regularizer=None, quantization_config=None, input_length=None, **kwargs):
        for name, v in (("input_dim", input_dim), ("output_dim", output_dim)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"Embedding: {name} must be a positive integer, got {name}={v!r}")
        if input_length is not None:   # Keras 3 ignores it too
            warnings.warn("Embedding: the argument `input_length` is deprecated and ignored", stacklevel=2)
        super().__init__(**kwargs)
        _refuse_unsupported(self, embeddings_constraint=embeddings_constraint, lora_rank=lora_rank,
                            lora_alpha=lora_alpha, activity_regularizer=activity_regularizer,
                            quantization_config=quantization_config)
        self.input_dim, self.output_dim = int(input_dim), int(output_dim)
        self.embeddings_initializer = initializers.get(embeddings_initializer)
        # the model adds its penalty to the loss (kilnet.regularizers.penalties)
        self.embeddings_regularizer = regularizers_mod.get(embeddings_regularizer)
        self.mask_zero = bool(mask_zero)
        self._initial_weights = None
        if weights is not None:   # set when the layer is built (its shape does not depend on the input)
            if not (isinstance(weights, list) and len(weights) == 1):
                weights = [weights]
            w = np.asarray(weights[0])
            if w.shape != (self.input_dim, self.output_dim):
                raise ValueError(f"Embedding {self.name!r}: weights must have shape "
                                 f"{(self.input_dim, self.output_dim)}, got {w.shape}")
            self._initial_weights = w

    def build(self, input_shape):
        self._add_weight("embeddings", (self.input_dim, self.output_dim), self.embeddings_initializer,
                         initialize=self._initialize)
        if self._initial_weights is not None:
            np.copyto(self.embeddings, self._initial_weights, casting="unsafe")
            self._initial_weights = None

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.output_dim)

    def compute_mask(self, inputs, mask=None):
        """ids != 0 when mask_zero (None otherwise), as Keras. kilnet's other layers do not
        consume masks yet: the mask is there for user code."""
        if not self.mask_zero:
            return None
        if isinstance(inputs, Tensor):
            return Tensor(inputs.value != 0)
        return np.asarray(inputs) != 0

    def forward(self, ids, training=False):
        if ids.dtype.kind in "fb":
            ids = ids.astype(np.int32)
        elif ids.dtype != np.int32 and ids.dtype != np.int64:
            ids = ids.astype(np.int64)
        y = self._buffer("y", tuple(ids.shape) + (self.output_dim,))
        self._k.embedding_forward(ids, self.embeddings, y)
        self._state()["ids"] = ids
        return y

    def backward(self, dy, need_dx=True, need_dw=True):
        if need_dw and self.trainable:
            fresh, self._fresh_grads = self._fresh_grads, False
            ids = self._state()["ids"]
            # the step's first write overwrites (on the CPU: zeros and sums in one pass)
            self._k.embedding_backward(ids, dy, self.dembeddings, accumulate=not fresh)
        return None   # ids have no gradient

    def get_config(self):
        return {**super().get_config(), "input_dim": self.input_dim, "output_dim": self.output_dim,
                "embeddings_initializer": initializers.serialize(self.embeddings_initializer),
                "embeddings_regularizer": regularizers_mod.serialize(self.embeddings_regularizer),
                "activity_regularizer": None, "embeddings_constraint": None, "mask_zero": self.mask_zero,
                "quantization_config": None}
