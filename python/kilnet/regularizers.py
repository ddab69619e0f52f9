"""Weight regularizers with Keras names, defaults and serialized form: L1, L2, L1L2.

  L1(l1=0.01):         penalty l1*sum|w|,              gradient l1*sign(w)
  L2(l2=0.01):         penalty l2*sum w^2 (no 1/2),    gradient 2*l2*w
  L1L2(l1=0.0, l2=0.0) both

A layer argument such as `Dense(64, kernel_regularizer=L2(1e-4))` adds the penalty of the
weight to the loss, as Keras does (the loss fit and evaluate report includes it), and its
gradient to the weight's gradient before the optimizer (and gradient clipping) sees it. The
model finds them by name: the regularizer of weight <attr> is the layer attribute
<attr>_regularizer (kernel_regularizer, bias_regularizer, gamma_regularizer, beta_regularizer),
and only trainable weights are regularized (Keras: layer.losses covers trainable weights).
"""
from __future__ import annotations

import math

import numpy as np

from kilnet.backend import is_cuda_array, kernels_for
from kilnet.utils import lookup

__all__ = ["Regularizer", "L1", "L2", "L1L2", "get", "serialize", "penalties"]


def _factor(name, value, who):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{who}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{who}: {name} must be a finite number >= 0, got {value!r}")
    return v


class Regularizer:
    """Base class: `reg(w)` is the penalty; `reg.add_gradient(w, dw)` adds its gradient to dw
    and returns the penalty (one pass over w)."""
    l1 = 0.0
    l2 = 0.0

    def __call__(self, w) -> float:
        if not is_cuda_array(w):
            w = np.ascontiguousarray(w, dtype=np.float32)
        return kernels_for(w).l1l2_penalty(w, None, self.l1, self.l2)

    def add_gradient(self, w, dw) -> float:
        return kernels_for(w).l1l2_penalty(w, dw, self.l1, self.l2)

    def get_config(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in self.get_config().items())})"


class L1(Regularizer):
    def __init__(self, l1=0.01):
        self.l1 = _factor("l1", l1, "L1")

    def get_config(self):
        return {"l1": self.l1}


class L2(Regularizer):
    def __init__(self, l2=0.01):
        self.l2 = _factor("l2", l2, "L2")

    def get_config(self):
        return {"l2": self.l2}


class L1L2(Regularizer):
    def __init__(self, l1=0.0, l2=0.0):
        self.l1 = _factor("l1", l1, "L1L2")
        self.l2 = _factor("l2", l2, "L1L2")

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


_CLASSES = {"L1": L1, "L2": L2, "L1L2": L1L2}
_ALIASES = {"l1": L1, "l2": L2, "l1l2": L1L2, "l1_l2": L1L2, **_CLASSES}


def get(identifier):
    """None, a Regularizer, a Keras name ('l1', 'l2', 'l1_l2') or a serialized dict."""
    if identifier is None or isinstance(identifier, Regularizer):
        return identifier
    if isinstance(identifier, str):
        return lookup("regularizer", _ALIASES, identifier)()
    if isinstance(identifier, dict):
        cls = lookup("regularizer class", _CLASSES, identifier.get("class_name"))
        try:
            return cls.from_config(identifier.get("config") or {})
        except TypeError as e:
            raise ValueError(f"regularizer {cls.__name__}: bad config ({e})") from None
    raise TypeError(f"cannot interpret {identifier!r} as a regularizer; pass L1/L2/L1L2 or a name")


def serialize(reg):
    if reg is None:
        return None
    return {"module": "keras.regularizers", "class_name": type(reg).__name__, "config": reg.get_config(),
            "registered_name": None}


def penalties(layers, grads=True, grad_scale=None) -> float:
    """Sum of the penalties on the trainable weights of `layers` (Keras: only trainable weights,
    of trainable layers, are regularized). With grads=True each penalty's gradient is added to
    the weight's gradient d<attr> (times grad_scale: a LossScaleOptimizer's loss scale, as the
    penalty is part of the scaled loss)."""
    total = 0.0
    for layer in layers:
        if not layer.trainable:
            continue
        for spec in layer._specs:
            reg = getattr(layer, spec.attr + "_regularizer", None) if spec.trainable else None
            if reg is not None:
                w = getattr(layer, spec.attr)
                if not grads:
                    total += reg(w)
                elif grad_scale is None:
                    total += reg.add_gradient(w, getattr(layer, "d" + spec.attr))
                else:
                    tmp = layer._xp.zeros_like(w)
                    total += reg.add_gradient(w, tmp)
                    dw = getattr(layer, "d" + spec.attr)
                    dw += tmp * np.float32(grad_scale)
    return total
