"""BatchNormalization over the channel (last) axis, with Keras's arguments and semantics.

Training (fit, and the layer trainable): normalize with the batch's mean and biased variance
over every axis but the last, and update moving_mean/moving_variance as
moving = moving*momentum + batch*(1 - momentum). Inference (evaluate, predict), or a frozen
layer (trainable=False, as in Keras 3): normalize with the moving statistics, update nothing.
y = gamma*(x - mean)/sqrt(var + epsilon) + beta. Weights, in Keras's order: gamma (scale=True),
beta (center=True), moving_mean, moving_variance; the moving statistics are non-trainable.
"""
from __future__ import annotations

import math

import numpy as np

from kilnet import initializers
from kilnet import regularizers as regularizers_mod
from kilnet.layers.base import Layer
from kilnet.layers.core import _refuse_unsupported

__all__ = ["BatchNormalization"]


class BatchNormalization(Layer):
    """`BatchNormalization(axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True, ...)`."""
    supports_masking = True   # a mask on the input passes to the output (Keras)

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones", moving_mean_initializer="zeros",
                 moving_variance_initializer="ones", beta_regularizer=None, gamma_regularizer=None,
                 beta_constraint=None, gamma_constraint=None, synchronized=False, renorm=False,
                 renorm_clipping=None, renorm_momentum=0.99, fused=None, virtual_batch_size=None,
                 adjustment=None, **kwargs):
        super().__init__(**kwargs)
        who = f"BatchNormalization {self.name!r}"
        # tf.keras writes the axis as a one-element list ([3]); Keras 3 as an int (-1).
        if isinstance(axis, (list, tuple)):
            if len(axis) != 1:
                raise ValueError(f"{who}: only one normalization axis (the last) is supported, got {axis!r}")
            axis = axis[0]
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"{who}: axis must be an int, got {axis!r}")
        self.axis = int(axis)
        self.momentum = _unit_float("momentum", momentum, who)
        self.epsilon = float(epsilon)
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ValueError(f"{who}: epsilon must be a positive number, got {epsilon!r}")
        if synchronized:
            raise ValueError(f"{who}: synchronized=True is not supported (kilnet trains on one device)")
        if renorm:
            raise ValueError(f"{who}: renorm=True is not supported yet")
        # `fused` only picks TensorFlow's implementation: the maths is the same, so it is ignored.
        _refuse_unsupported(self, beta_constraint=beta_constraint, gamma_constraint=gamma_constraint,
                            renorm_clipping=renorm_clipping, virtual_batch_size=virtual_batch_size,
                            adjustment=adjustment)
        self.center, self.scale = bool(center), bool(scale)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(moving_variance_initializer)
        self.beta_regularizer = regularizers_mod.get(beta_regularizer)
        self.gamma_regularizer = regularizers_mod.get(gamma_regularizer)

    def build(self, input_shape):
        who = f"BatchNormalization {self.name!r}"
        rank = len(input_shape)
        if rank < 2 or input_shape[-1] is None:
            raise ValueError(f"{who}: needs inputs with a known last axis, got shape {input_shape}")
        if self.axis not in (-1, rank - 1):
            raise ValueError(f"{who}: only the last axis (-1 or {rank - 1}) can be normalized, got axis={self.axis}")
        c, init = (input_shape[-1],), self._initialize
        if self.scale:
            self._add_weight("gamma", c, self.gamma_initializer, initialize=init)
        if self.center:
            self._add_weight("beta", c, self.beta_initializer, initialize=init)
        self._add_weight("moving_mean", c, self.moving_mean_initializer, trainable=False, initialize=init)
        self._add_weight("moving_variance", c, self.moving_variance_initializer, trainable=False, initialize=init)

    def forward(self, x, training=False):
        c = x.shape[-1]
        st = self._state()
        y = self._buffer("y", x.shape)
        mean, invstd = self._buffer("mean", (c,)), self._buffer("invstd", (c,))
        batch_stats = bool(training) and self.trainable   # Keras 3: a frozen layer runs in inference mode
        self._k.batchnorm_forward(x, self.gamma if self.scale else None, self.beta if self.center else None,
                               self.moving_mean, self.moving_variance, mean, invstd, y,
                               self.momentum, self.epsilon, batch_stats)
        st.update(x=x, mean=mean, invstd=invstd, batch_stats=batch_stats)
        return y

    def backward(self, dy, need_dx=True, need_dw=True):
        st = self._state()
        x = st["x"]
        grads = need_dw and self.trainable
        dgamma = self.dgamma if grads and self.scale else None
        dbeta = self.dbeta if grads and self.center else None
        dx = self._buffer("dx", x.shape) if need_dx else None
        if dx is not None or dgamma is not None or dbeta is not None:
            self._k.batchnorm_backward(x, dy, self.gamma if self.scale else None, st["mean"], st["invstd"],
                                    dx, dgamma, dbeta, st["batch_stats"])
        return dx

    def get_config(self):
        ser = initializers.serialize
        return {**super().get_config(), "axis": self.axis, "momentum": self.momentum,
                "epsilon": self.epsilon, "center": self.center, "scale": self.scale,
                "beta_initializer": ser(self.beta_initializer), "gamma_initializer": ser(self.gamma_initializer),
                "moving_mean_initializer": ser(self.moving_mean_initializer),
                "moving_variance_initializer": ser(self.moving_variance_initializer),
                "beta_regularizer": regularizers_mod.serialize(self.beta_regularizer),
                "gamma_regularizer": regularizers_mod.serialize(self.gamma_regularizer),
                "beta_constraint": None, "gamma_constraint": None, "synchronized": False}


def _unit_float(name, value, who):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{who}: {name} must be a number, got {value!r}") from None
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{who}: {name} must be in [0, 1], got {value!r}")
    return v
