"""Optimizers with Keras names, defaults and update formulas.

A model keeps all trainable parameters in one flat float32 buffer and their gradients in
another; an optimizer keeps its state (momenta) as flat buffers of the same length, so one
kernel call per step updates the whole model.
"""
from __future__ import annotations

import math

import numpy as np

from kilnet import _cpu
from kilnet.utils import lookup

__all__ = ["Optimizer", "SGD", "Adam", "get", "serialize"]


def _positive(name, value, who, allow_zero=False):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{who}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{who}: {name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return v


class Optimizer:
    slots: tuple = ()   # names of the per-parameter state buffers

    def __init__(self, learning_rate, name=None, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, use_ema=False, loss_scale_factor=None,
                 gradient_accumulation_steps=None, **kwargs):
        who = type(self).__name__
        if kwargs:
            raise TypeError(f"{who}: unexpected argument(s) {', '.join(sorted(kwargs))}")
        for arg, v in (("weight_decay", weight_decay), ("clipnorm", clipnorm), ("clipvalue", clipvalue),
                       ("global_clipnorm", global_clipnorm), ("loss_scale_factor", loss_scale_factor),
                       ("gradient_accumulation_steps", gradient_accumulation_steps)):
            if v is not None:
                raise ValueError(f"{who}: {arg} is not supported yet")
        if use_ema:
            raise ValueError(f"{who}: use_ema is not supported yet")
        self.learning_rate = _positive("learning_rate", learning_rate, who)
        self.name = name or who.lower()
        self.iterations = 0
        self.state: dict[str, np.ndarray] = {}

    def build(self, n_params: int) -> None:
        """Allocate the state buffers for a model with n_params trainable values (once)."""
        for slot in self.slots:
            if slot not in self.state or self.state[slot].size != n_params:
                self.state[slot] = np.zeros(n_params, np.float32)

    def apply(self, params: np.ndarray, grads: np.ndarray) -> None:
        """One step over the flat parameter buffer."""
        self.iterations += 1
        self._update(params, grads)

    def _update(self, params, grads):
        raise NotImplementedError

    def get_config(self) -> dict:
        return {"name": self.name, "learning_rate": self.learning_rate, "weight_decay": None,
                "clipnorm": None, "global_clipnorm": None, "clipvalue": None, "use_ema": False}

    @classmethod
    def from_config(cls, config):
        cfg = dict(config)
        # Keras writes these with default values; anything that would change the maths is refused.
        for key in ("ema_momentum", "ema_overwrite_frequency", "is_legacy_optimizer", "jit_compile",
                    "decay"):
            cfg.pop(key, None)
        return cls(**cfg)


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, Keras's formulation:
    v = momentum*v - lr*g; p += v  (nesterov: p += momentum*v - lr*g)."""
    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.momentum = _positive("momentum", momentum, "SGD", allow_zero=True)
        if self.momentum >= 1:
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum!r}")
        self.nesterov = bool(nesterov)
        self.slots = ("momentum",) if self.momentum > 0 else ()

    def _update(self, params, grads):
        vel = self.state.get("momentum")
        _cpu.sgd_update(params, grads, vel, self.learning_rate, self.momentum, self.nesterov)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam (Kingma & Ba) in Keras's form: epsilon is added to sqrt(v) after bias correction of
    the step size."""
    slots = ("m", "v")

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False, **kwargs):
        super().__init__(learning_rate, **kwargs)
        for n, b in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not 0 <= float(b) < 1:
                raise ValueError(f"Adam: {n} must be in [0, 1), got {b!r}")
        if amsgrad:
            raise ValueError("Adam: amsgrad=True is not supported yet")
        self.beta_1, self.beta_2 = float(beta_1), float(beta_2)
        self.epsilon = _positive("epsilon", epsilon, "Adam")

    def _update(self, params, grads):
        _cpu.adam_update(params, grads, self.state["m"], self.state["v"], self.learning_rate,
                         self.beta_1, self.beta_2, self.epsilon, self.iterations)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon, "amsgrad": False}


_ALIASES = {"sgd": SGD, "adam": Adam}
_CLASSES = {"SGD": SGD, "Adam": Adam}


def get(identifier) -> Optimizer:
    """An optimizer from an instance, a Keras name ('adam', 'sgd') or a serialized dict."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str):
        return lookup("optimizer", _ALIASES, identifier)()
    if isinstance(identifier, dict):
        name = str(identifier.get("class_name", "")).replace("Custom>", "")
        cls = lookup("optimizer class", _CLASSES, name)
        try:
            return cls.from_config(identifier.get("config") or {})
        except TypeError as e:
            raise ValueError(f"optimizer {name}: bad config ({e})") from None
    raise TypeError(f"cannot interpret {identifier!r} as an optimizer; pass a kilnet.optimizers.Optimizer or a name")


def serialize(opt: Optimizer) -> dict:
    return {"module": "keras.optimizers", "class_name": type(opt).__name__,
            "config": opt.get_config(), "registered_name": None}
