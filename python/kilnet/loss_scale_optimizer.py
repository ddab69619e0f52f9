"""LossScaleOptimizer: Keras 3's dynamic loss scaling for float16 training.

Small float16 gradients underflow to zero; scaling the loss by S scales every gradient by S,
and the optimizer divides them back before its update. As Keras 3's
(keras/optimizers/loss_scale_optimizer.py):
  - a step whose gradients hold inf or NaN is skipped: no update, S halves, the counter resets;
  - otherwise the gradients are divided by S and the inner optimizer steps; after
    `dynamic_growth_steps` such steps in a row S doubles (the counter resets).
`iterations` is the inner optimizer's (skipped steps do not count). In fit the trainer seeds the
backward walk with S instead of 1 (the loss it reports stays unscaled); in a GradientTape loop
call `scaled = opt.scale_loss(loss)`, take the gradients of `scaled`, then `opt.apply(grads,
variables)`. compile() wraps the optimizer in one when the model's policy is mixed_float16.
"""
from __future__ import annotations

import math

import numpy as np

from kilnet import optimizers as optimizers_mod
from kilnet.backend import xp_for

__all__ = ["LossScaleOptimizer"]

# Keras writes these base-optimizer keys with their defaults; other values are refused as Keras does.
_BASE_DEFAULTS = {"weight_decay": None, "clipnorm": None, "global_clipnorm": None, "clipvalue": None,
                  "use_ema": False, "ema_momentum": 0.99, "ema_overwrite_frequency": None,
                  "loss_scale_factor": None, "gradient_accumulation_steps": None}


class LossScaleOptimizer(optimizers_mod.Optimizer):
    """`LossScaleOptimizer(inner_optimizer, initial_scale=2**15, dynamic_growth_steps=2000)`."""

    def __init__(self, inner_optimizer, initial_scale=2.0 ** 15, dynamic_growth_steps=2000, name=None, **kwargs):
        if not kwargs.pop("dynamic", True):
            raise ValueError("LossScaleOptimizer no longer supports `dynamic=False`. Instead, simply set "
                             "`loss_scale_factor` directly on the `inner_optimizer`.")
        for key, default in _BASE_DEFAULTS.items():
            if key in kwargs and kwargs.pop(key) != default:
                raise ValueError(f"LossScaleOptimizer does not support `{key}`. Instead, set `{key}` on the "
                                 "`inner_optimizer`.")
        if kwargs:
            raise ValueError(f"LossScaleOptimizer does not support arguments: `{'`, `'.join(kwargs)}`.")
        if isinstance(inner_optimizer, LossScaleOptimizer):
            raise ValueError("LossScaleOptimizer: the inner optimizer is a LossScaleOptimizer already")
        inner = optimizers_mod.get(inner_optimizer)
        if getattr(inner, "_private_train_step", None) is not None:
            raise ValueError("LossScaleOptimizer cannot wrap a DP-SGD optimizer (it clips per example)")
        try:
            scale = float(initial_scale)
        except (TypeError, ValueError):
            raise TypeError(f"LossScaleOptimizer: initial_scale must be a number, got {initial_scale!r}") from None
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"LossScaleOptimizer: initial_scale must be a finite number > 0, got {initial_scale!r}")
        if isinstance(dynamic_growth_steps, bool) or not isinstance(dynamic_growth_steps, (int, np.integer)) \
                or dynamic_growth_steps < 1:
            raise ValueError(f"LossScaleOptimizer: dynamic_growth_steps must be an int >= 1, got "
                             f"{dynamic_growth_steps!r}")
        self.inner_optimizer = inner
        self.initial_scale = scale
        self.dynamic_growth_steps = int(dynamic_growth_steps)
        self.dynamic_scale = scale    # Keras's variable of the same name: the current S
        self.step_counter = 0         # finite steps since S last changed
        self.name = name or "loss_scale_optimizer"
        self.clipnorm = self.clipvalue = self.global_clipnorm = self.weight_decay = None
        self._var_states = {}

    # -- what the trainer and the savers read: the inner optimizer's --------------------------
    def __getattr__(self, attr):
        # only reached for attributes this object lacks (slots, epsilon, _learning_rate, ...)
        if attr == "inner_optimizer":
            raise AttributeError(attr)
        return getattr(self.inner_optimizer, attr)

    @property
    def state(self):
        return self.inner_optimizer.state

    @state.setter
    def state(self, value):
        self.inner_optimizer.state = value

    @property
    def iterations(self) -> int:
        return self.inner_optimizer.iterations

    @iterations.setter
    def iterations(self, value):
        self.inner_optimizer.iterations = value

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self.inner_optimizer.learning_rate = value

    @property
    def slots(self):
        return self.inner_optimizer.slots

    def build(self, n_params: int, offsets=None, like=None) -> None:
        self.inner_optimizer.build(n_params, offsets, like)

    # -- loss scaling ---------------------------------------------------------------------
    def scale_loss(self, loss):
        """loss * S (a Tensor stays a Tensor on the tape)."""
        return loss * self.dynamic_scale

    def _loss_scale_seed(self):
        return self.dynamic_scale

    def apply(self, grads, trainable_variables=None) -> None:
        """One step on scaled gradients: skipped (S halved) when any is inf/NaN, else the
        gradients are unscaled and the inner optimizer steps. The trainer's flat buffers are
        unscaled in place."""
        flat = isinstance(trainable_variables, np.ndarray) or hasattr(trainable_variables, "__cuda_array_interface__")
        if flat:   # the trainer's apply(params, grads) on the model's flat buffers
            params, grads = grads, trainable_variables
            finite = bool(xp_for(grads).isfinite(grads).all())
        elif trainable_variables is None:
            raise ValueError("LossScaleOptimizer.apply: pass the variables (apply(grads, variables))")
        else:
            from kilnet.engine.tensor import value_of
            grads = list(grads)
            finite = all(bool(xp_for(value_of(g)).isfinite(value_of(g)).all()) for g in grads if g is not None)
        if not finite:
            self.step_counter = 0
            self.dynamic_scale *= 0.5
            return
        inv = 1.0 / self.dynamic_scale
        if flat:
            grads *= np.float32(inv)
            self.inner_optimizer.apply(params, grads)
        else:
            from kilnet.engine.tensor import value_of
            self.inner_optimizer.apply([None if g is None else value_of(g) * np.float32(inv) for g in grads],
                                       trainable_variables)
        if self.step_counter == self.dynamic_growth_steps - 1:
            self.step_counter = 0
            self.dynamic_scale *= 2.0
        else:
            self.step_counter += 1

    def _apply_flat(self, params, grads) -> None:
        self.apply(params, grads)

    def get_config(self) -> dict:
        return {"name": self.name, "inner_optimizer": optimizers_mod.serialize(self.inner_optimizer),
                "initial_scale": self.initial_scale, "dynamic_growth_steps": self.dynamic_growth_steps}

    @classmethod
    def from_config(cls, config):
        cfg = dict(config)
        inner = cfg.pop("inner_optimizer", None)
        if inner is None:
            raise ValueError("LossScaleOptimizer config has no inner_optimizer")
        return cls(optimizers_mod.get(inner), **cfg)
