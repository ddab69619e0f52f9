"""LayerNormalization with Keras 3's arguments, weights and semantics.

Each sample is normalized over `axis` (default the last axis; a list of trailing axes is
flattened into one): y = gamma*(x - mean)/sqrt(var + epsilon) + beta with the mean and biased
variance of that sample's values. Weights, in Keras's order: gamma (scale=True or
rms_scaling=True), beta (center=True and not rms_scaling), each of the normalized axes' shape.
rms_scaling=True is Keras's deprecated variant y = gamma*x/sqrt(var + epsilon) (no mean
subtracted, no beta). The same in training and inference; there are no moving statistics.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from kilnet import initializers
from kilnet import regularizers as regularizers_mod
from kilnet.layers.base import Layer
from kilnet.layers.core import _refuse_unsupported

__all__ = ["LayerNormalization"]


class LayerNormalization(Layer):
    """`LayerNormalization(axis=-1, epsilon=1e-3, center=True, scale=True, ...)`."""

    def __init__(self, axis=-1, epsilon=1e-3, center=True, scale=True, rms_scaling=False,
                 beta_initializer="zeros", gamma_initializer="ones", beta_regularizer=None,
                 gamma_regularizer=None, beta_constraint=None, gamma_constraint=None, **kwargs):
        super().__init__(**kwargs)
        who = f"LayerNormalization {self.name!r}"
        if rms_scaling:   # Keras 3 warns the same way, and computes it as written here
            warnings.warn("LayerNormalization: rms_scaling=True is deprecated in Keras 3 (it scales by the "
                          "variance, not the root mean square); use RMSNormalization for RMS normalization",
                          stacklevel=2)
        if isinstance(axis, (list, tuple)):
            axis = list(axis)
            if not axis or any(isinstance(a, bool) or not isinstance(a, (int, np.integer)) for a in axis):
                raise TypeError(f"{who}: axis must be an int or a non-empty list of ints, got {axis!r}")
            axis = [int(a) for a in axis]
        elif isinstance(axis, (int, np.integer)) and not isinstance(axis, bool):
            axis = int(axis)
        else:
            raise TypeError(f"{who}: expected an int or a list/tuple of ints for the argument 'axis', got {axis!r}")
        self.axis = axis
        try:
            self.epsilon = float(epsilon)
        except (TypeError, ValueError):
            raise TypeError(f"{who}: epsilon must be a number, got {epsilon!r}") from None
        if not (math.isfinite(self.epsilon) and self.epsilon >= 0):
            raise ValueError(f"{who}: epsilon must be a finite number >= 0, got {epsilon!r}")
        _refuse_unsupported(self, beta_constraint=beta_constraint, gamma_constraint=gamma_constraint)
        self.center, self.scale, self.rms_scaling = bool(center), bool(scale), bool(rms_scaling)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.beta_regularizer = regularizers_mod.get(beta_regularizer)
        self.gamma_regularizer = regularizers_mod.get(gamma_regularizer)

    def build(self, input_shape):
        who = f"LayerNormalization {self.name!r}"
        rank = len(input_shape)
        # Keras: a list of axes is sorted, an int becomes a one-element list
        axes = sorted(self.axis) if isinstance(self.axis, list) else [self.axis]
        for a in axes:
            if not -rank <= a < rank:
                raise ValueError(f"{who}: axis {a} is out of bounds for input shape {tuple(input_shape)}")
        pos = sorted(a % rank for a in axes)
        if len(set(pos)) != len(pos) or 0 in pos or pos != list(range(rank - len(pos), rank)):
            raise ValueError(f"{who}: kilnet normalizes over trailing axes only (the last k axes, not the "
                             f"batch axis); got axis={self.axis!r} for inputs of rank {rank}")
        shape = tuple(input_shape[a] for a in pos)
        if any(s is None for s in shape):
            raise ValueError(f"{who}: the normalized axes must have known sizes, got input shape {tuple(input_shape)}")
        self.axis = axes
        init = self._initialize
        if self.scale or self.rms_scaling:
            self._add_weight("gamma", shape, self.gamma_initializer, initialize=init)
        if self.center and not self.rms_scaling:
            self._add_weight("beta", shape, self.beta_initializer, initialize=init)
        self._width = math.prod(shape)   # C: the values normalized together

    def compute_output_shape(self, input_shape):
        return input_shape

    def _has(self, name):
        return name == "gamma" and (self.scale or self.rms_scaling) or \
            name == "beta" and self.center and not self.rms_scaling

    def _computes_low_natively(self) -> bool:
        # under a bfloat16 policy on the CPU the kernels read the bfloat16 input and write the
        # bfloat16 output themselves (float32 rows inside, as Keras normalizes in float32)
        return self.compute_dtype == "bfloat16" and self.device == "cpu"

    def forward(self, x, training=False):
        c = self._width
        x2 = x.reshape(-1, c)
        y = self._buffer("y16", x.shape, x.dtype) if x.dtype != np.float32 else self._buffer("y", x.shape)
        m = x2.shape[0]
        mean, invstd = self._buffer("mean", (m,)), self._buffer("invstd", (m,))
        gamma = self.gamma.reshape(-1) if self._has("gamma") else None
        beta = self.beta.reshape(-1) if self._has("beta") else None
        self._k.layernorm_forward(x2, gamma, beta, mean, invstd, y.reshape(-1, c), self.epsilon, self.rms_scaling)
        self._state().update(x=x2, mean=mean, invstd=invstd)
        return y

    def backward(self, dy, need_dx=True, need_dw=True):
        st = self._state()
        x2 = st["x"]
        grads = need_dw and self.trainable
        # reshape(-1) of the contiguous gradient arrays is a view: the kernel adds into them
        dgamma = self.dgamma.reshape(-1) if grads and self._has("gamma") else None
        dbeta = self.dbeta.reshape(-1) if grads and self._has("beta") else None
        dx = self._buffer("dx", dy.shape) if need_dx else None
        if dx is not None or dgamma is not None or dbeta is not None:
            self._k.layernorm_backward(x2, dy.reshape(x2.shape), self.gamma.reshape(-1) if self._has("gamma") else None,
                                       st["mean"], st["invstd"], None if dx is None else dx.reshape(x2.shape),
                                       dgamma, dbeta, self.rms_scaling)
        return dx

    def get_config(self):
        ser = initializers.serialize
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon, "center": self.center,
                "scale": self.scale, "rms_scaling": self.rms_scaling,
                "beta_initializer": ser(self.beta_initializer), "gamma_initializer": ser(self.gamma_initializer),
                "beta_regularizer": regularizers_mod.serialize(self.beta_regularizer),
                "gamma_regularizer": regularizers_mod.serialize(self.gamma_regularizer),
                "beta_constraint": None, "gamma_constraint": None}
