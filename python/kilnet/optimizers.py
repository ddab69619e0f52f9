"""Optimizers with Keras names, defaults and update formulas.

A model keeps all trainable parameters in one flat float32 buffer and their gradients in
another; an optimizer keeps its state (momenta) as flat buffers of the same length, so one
kernel call per step updates the whole model.

One step (`apply`), in Keras 3's order (keras/optimizers/base_optimizer.py):
  1. the learning rate: a float, or a schedule (kilnet.schedules) called with the number of
     steps done so far (0 for the first);
  2. gradient clipping, at most one of: clipnorm (each weight's gradient to norm <= clipnorm),
     global_clipnorm (all gradients together), clipvalue (each element to [-v, v]);
  3. decoupled weight decay p -= p*weight_decay*lr (weight_decay=None: none);
  4. the optimizer's update.
The weight boundaries clipnorm needs come from the model (build's offsets); an optimizer used
on a bare array treats it as one weight.
"""
from __future__ import annotations

import math

import numpy as np

from kilnet.backend import kernels_for, xp_for
from kilnet import schedules as schedules_mod
from kilnet.utils import lookup

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "LossScaleOptimizer", "get", "serialize"]


def _positive(name, value, who, allow_zero=False):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{who}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{who}: {name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return v


def _unit(name, value, who):
    """A decay factor in [0, 1) (betas, rho, momentum)."""
    v = _positive(name, value, who, allow_zero=True)
    if v >= 1:
        raise ValueError(f"{who}: {name} must be in [0, 1), got {value!r}")
    return v


class Optimizer:
    slots: tuple = ()   # names of the per-parameter state buffers
    slot_initial: dict = {}   # a slot's starting value when not 0 (Adagrad's accumulator)

    def __init__(self, learning_rate, name=None, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, use_ema=False, loss_scale_factor=None,
                 gradient_accumulation_steps=None, **kwargs):
        who = type(self).__name__
        if kwargs:
            raise TypeError(f"{who}: unexpected argument(s) {', '.join(sorted(kwargs))}")
        for arg, v in (("loss_scale_factor", loss_scale_factor),
                       ("gradient_accumulation_steps", gradient_accumulation_steps)):
            if v is not None:
                raise ValueError(f"{who}: {arg} is not supported yet")
        if use_ema:
            raise ValueError(f"{who}: use_ema is not supported yet")
        clips = {k: v for k, v in (("clipnorm", clipnorm), ("clipvalue", clipvalue),
                                   ("global_clipnorm", global_clipnorm)) if v is not None}
        if len(clips) > 1:   # as Keras: the three are alternatives
            raise ValueError(f"{who}: only one of clipnorm, clipvalue and global_clipnorm can be set, got "
                             + ", ".join(f"{k}={v}" for k, v in clips.items()))
        self.clipnorm, self.clipvalue, self.global_clipnorm = (
            None if v is None else _positive(k, v, who) for k, v in
            (("clipnorm", clipnorm), ("clipvalue", clipvalue), ("global_clipnorm", global_clipnorm)))
        self.weight_decay = None if weight_decay is None else _positive("weight_decay", weight_decay, who,
                                                                         allow_zero=True)
        if isinstance(learning_rate, dict):
            learning_rate = schedules_mod.get(learning_rate)
        self._learning_rate = learning_rate if isinstance(learning_rate, schedules_mod.LearningRateSchedule) \
            else _positive("learning_rate", learning_rate, who)
        self.name = name or who.lower()
        self.iterations = 0
        self.state: dict[str, np.ndarray] = {}
        self._var_states: dict = {}   # apply(grads, variables) on variable sets outside one flat buffer
        self._clip_offsets = None

    @property
    def learning_rate(self) -> float:
        """The learning rate of the next step (a schedule's value at the current iteration)."""
        lr = self._learning_rate
        return float(lr(self.iterations)) if isinstance(lr, schedules_mod.LearningRateSchedule) else lr

    @property
    def learning_rate_schedule(self):
        """The LearningRateSchedule the optimizer was given, or None for a fixed rate."""
        lr = self._learning_rate
        return lr if isinstance(lr, schedules_mod.LearningRateSchedule) else None

    @learning_rate.setter
    def learning_rate(self, value):
        if isinstance(self._learning_rate, schedules_mod.LearningRateSchedule):
            raise TypeError(f"{type(self).__name__}: the learning rate is a schedule and cannot be set")
        self._learning_rate = _positive("learning_rate", value, type(self).__name__, allow_zero=True)

    def build(self, n_params: int, offsets=None, like=None) -> None:
        """Allocate the state buffers for a model with n_params trainable values (once), on the
        device of `like` (the parameter buffer; numpy when None), moving existing state there.
        offsets: where each weight starts in the flat buffer, plus n_params at the end (for
        clipnorm, which clips each weight's gradient on its own); None: one weight."""
        xp = np if like is None else xp_for(like)
        for slot in self.slots:
            if slot not in self.state or self.state[slot].size != n_params:
                self.state[slot] = xp.full(n_params, self.slot_initial.get(slot, 0.0), np.float32)
            elif xp_for(self.state[slot]) is not xp:
                self.state[slot] = xp.asarray(self.state[slot]) if xp is not np else self.state[slot].get()
        # The segments norm clipping works on: each weight (clipnorm) or all together (global_clipnorm).
        per_weight = self.clipnorm is not None and offsets is not None
        self._clip_offsets = np.asarray(offsets if per_weight else [0, n_params], np.int64)

    def apply(self, grads, trainable_variables=None) -> None:
        """Keras 3's `optimizer.apply(grads, variables)`: one step for these Variables, as one
        fused kernel call over a gathered copy of their values and gradients (the values are
        written back; the state is kept per set of variables). kilnet's trainer calls
        apply(params, grads) on the model's flat buffers directly, with no copy."""
        if trainable_variables is None or hasattr(trainable_variables, "__cuda_array_interface__") or \
                isinstance(trainable_variables, np.ndarray):
            return self._apply_flat(grads, trainable_variables)
        from kilnet.engine.tensor import value_of
        variables = list(trainable_variables)
        grads = list(grads)
        if len(grads) != len(variables):
            raise ValueError(f"{type(self).__name__}.apply: {len(grads)} gradients for {len(variables)} variables")
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        if not pairs:
            return
        for g, v in pairs:
            if tuple(np.shape(value_of(g))) != tuple(v.shape):
                raise ValueError(f"{type(self).__name__}.apply: gradient of shape {tuple(np.shape(value_of(g)))} "
                                 f"for variable {v.name!r} of shape {tuple(v.shape)}")
        xp = xp_for(pairs[0][1].value)
        key = tuple(id(v) for _, v in pairs)
        params = xp.concatenate([v.value.reshape(-1) for _, v in pairs])
        flat = xp.concatenate([xp.asarray(value_of(g), dtype=np.float32).reshape(-1) for g, _ in pairs])
        store = self._var_states.setdefault(key, {})
        saved, self.state = self.state, store
        offsets = np.cumsum([0] + [int(np.prod(v.shape)) for _, v in pairs])
        try:
            for slot in self.slots:
                if slot not in self.state:
                    self.state[slot] = xp.full(params.size, self.slot_initial.get(slot, 0.0), np.float32)
            self._clip_offsets = offsets if self.clipnorm is not None else np.array([0, params.size], np.int64)
            self._apply_flat(params, flat)
        finally:
            self.state = saved
        for (_, v), a, b in zip(pairs, offsets[:-1], offsets[1:]):
            v.value[...] = params[a:b].reshape(v.shape)

    def scale_loss(self, loss):
        """Keras 3: the loss the gradients are taken of (a LossScaleOptimizer scales it)."""
        return loss

    def apply_gradients(self, grads_and_vars) -> None:
        """TensorFlow's form: `apply_gradients(zip(grads, variables))`."""
        pairs = list(grads_and_vars)
        self.apply([g for g, _ in pairs], [v for _, v in pairs])

    def _apply_flat(self, params, grads) -> None:
        """One step over the flat parameter buffer; clipping changes grads in place."""
        lr = self.learning_rate
        norm = self.clipnorm if self.clipnorm is not None else self.global_clipnorm
        if norm is not None:
            offsets = self._clip_offsets
            if offsets is None or offsets[-1] != grads.size:   # not built for this buffer: one weight
                offsets = np.array([0, grads.size], np.int64)
            kernels_for(grads).clip_by_norm(grads, offsets, norm)
        elif self.clipvalue is not None:
            kernels_for(grads).clip_by_value(grads, self.clipvalue)
        self.iterations += 1
        self._update(params, grads, lr)

    def _update(self, params, grads, lr):
        raise NotImplementedError

    def get_config(self) -> dict:
        lr = self._learning_rate
        return {"name": self.name,
                "learning_rate": schedules_mod.serialize(lr) if isinstance(lr, schedules_mod.LearningRateSchedule) else lr,
                "weight_decay": self.weight_decay, "clipnorm": self.clipnorm,
                "global_clipnorm": self.global_clipnorm, "clipvalue": self.clipvalue, "use_ema": False}

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
        self.momentum = _unit("momentum", momentum, "SGD")
        self.nesterov = bool(nesterov)
        self.slots = ("momentum",) if self.momentum > 0 else ()

    def _update(self, params, grads, lr):
        if self.weight_decay:   # SGD's kernel has no decay term: one extra in-place pass
            params *= np.float32(1.0 - self.weight_decay * lr)
        vel = self.state.get("momentum")
        kernels_for(params).sgd_update(params, grads, vel, lr, self.momentum, self.nesterov)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam (Kingma & Ba) in Keras's form: epsilon is added to sqrt(v) after bias correction of
    the step size."""
    slots = ("m", "v")
    nonnegative_slots = ("v",)   # checked when state is read from a file (saving/optimizer_state.py)

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False, **kwargs):
        super().__init__(learning_rate, **kwargs)
        who = type(self).__name__
        self.beta_1, self.beta_2 = _unit("beta_1", beta_1, who), _unit("beta_2", beta_2, who)
        if amsgrad:
            raise ValueError(f"{who}: amsgrad=True is not supported yet")
        self.epsilon = _positive("epsilon", epsilon, who)

    def _update(self, params, grads, lr):
        m, v = self.state["m"], self.state["v"]
        if self.weight_decay:   # Keras 3's Adam with weight_decay is AdamW
            kernels_for(params).adamw_update(params, grads, m, v, lr, self.beta_1, self.beta_2, self.epsilon,
                              self.weight_decay, self.iterations)
        else:
            kernels_for(params).adam_update(params, grads, m, v, lr, self.beta_1, self.beta_2, self.epsilon, self.iterations)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon, "amsgrad": False}


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), Keras's form: before each Adam
    step p -= p*weight_decay*lr. weight_decay defaults to 0.004, as in Keras."""

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, **kwargs):
        if weight_decay is None:
            raise ValueError("AdamW: weight_decay must be a number (default 0.004), got None")
        super().__init__(learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, amsgrad=amsgrad,
                         weight_decay=weight_decay, **kwargs)


class RMSprop(Optimizer):
    """RMSprop, Keras's formulation (epsilon inside the square root):
    v = rho*v + (1-rho)*g²; inc = lr*g/sqrt(v + eps)  (centered: sqrt(v - a² + eps) with
    a = rho*a + (1-rho)*g); momentum > 0: mom = momentum*mom + inc, p -= mom; else p -= inc."""

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.rho = _unit("rho", rho, "RMSprop")
        self.momentum = _unit("momentum", momentum, "RMSprop")
        self.epsilon = _positive("epsilon", epsilon, "RMSprop", allow_zero=True)
        self.centered = bool(centered)
        self.slots = ("velocity",) + (("momentum",) if self.momentum > 0 else ()) + \
                     (("average_gradient",) if self.centered else ())
        self.nonnegative_slots = ("velocity",)   # a mean square

    def _update(self, params, grads, lr):
        st = self.state
        kernels_for(params).rmsprop_update(params, grads, st["velocity"], st.get("average_gradient"), st.get("momentum"), lr,
                            self.rho, self.momentum, self.epsilon, self.weight_decay or 0.0)

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "momentum": self.momentum, "epsilon": self.epsilon,
                "centered": self.centered}


class Adagrad(Optimizer):
    """Adagrad, Keras's formulation: acc += g²; p -= lr*g/sqrt(acc + eps), the accumulator
    starting at initial_accumulator_value (0.1)."""
    slots = ("accumulator",)
    nonnegative_slots = ("accumulator",)   # a sum of squares

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.initial_accumulator_value = _positive("initial_accumulator_value", initial_accumulator_value,
                                                   "Adagrad", allow_zero=True)
        self.epsilon = _positive("epsilon", epsilon, "Adagrad", allow_zero=True)
        self.slot_initial = {"accumulator": self.initial_accumulator_value}

    def _update(self, params, grads, lr):
        kernels_for(params).adagrad_update(params, grads, self.state["accumulator"], lr, self.epsilon, self.weight_decay or 0.0)

    def get_config(self):
        return {**super().get_config(), "initial_accumulator_value": self.initial_accumulator_value,
                "epsilon": self.epsilon}


_ALIASES = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop, "adagrad": Adagrad}
_CLASSES = {"SGD": SGD, "Adam": Adam, "AdamW": AdamW, "RMSprop": RMSprop, "Adagrad": Adagrad}


def get(identifier) -> Optimizer:
    """An optimizer from an instance, a Keras name ('adam', 'sgd') or a serialized dict."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str):
        return lookup("optimizer", _ALIASES, identifier)()
    if isinstance(identifier, dict):
        name = str(identifier.get("class_name", "")).replace("Custom>", "")
        if name == "LossScaleOptimizer":
            return LossScaleOptimizer.from_config(identifier.get("config") or {})
        cls = lookup("optimizer class", _CLASSES, name)
        try:
            return cls.from_config(identifier.get("config") or {})
        except TypeError as e:
            raise ValueError(f"optimizer {name}: bad config ({e})") from None
    raise TypeError(f"cannot interpret {identifier!r} as an optimizer; pass a kilnet.optimizers.Optimizer or a name")


def serialize(opt: Optimizer) -> dict:
    return {"module": "keras.optimizers", "class_name": type(opt).__name__,
            "config": opt.get_config(), "registered_name": None}

# ---------------------------------------------------------------------- dynamic loss scaling
# LossScaleOptimizer: Keras 3's dynamic loss scaling for float16 training.
#
# Small float16 gradients underflow to zero; scaling the loss by S scales every gradient by S,
# and the optimizer divides them back before its update. As Keras 3's
# (keras/optimizers/loss_scale_optimizer.py):
#   - a step whose gradients hold inf or NaN is skipped: no update, S halves, the counter resets;
#   - otherwise the gradients are divided by S and the inner optimizer steps; after
#     `dynamic_growth_steps` such steps in a row S doubles (the counter resets).
# `iterations` is the inner optimizer's (skipped steps do not count). In fit the trainer seeds the
# backward walk with S instead of 1 (the loss it reports stays unscaled); in a GradientTape loop
# call `scaled = opt.scale_loss(loss)`, take the gradients of `scaled`, then `opt.apply(grads,
# variables)`. compile() wraps the optimizer in one when the model's policy is mixed_float16.

# Keras writes these base-optimizer keys with their defaults; other values are refused as Keras does.
_BASE_DEFAULTS = {"weight_decay": None, "clipnorm": None, "global_clipnorm": None, "clipvalue": None,
                  "use_ema": False, "ema_momentum": 0.99, "ema_overwrite_frequency": None,
                  "loss_scale_factor": None, "gradient_accumulation_steps": None}


class LossScaleOptimizer(Optimizer):
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
        inner = get(inner_optimizer)
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
        return {"name": self.name, "inner_optimizer": serialize(self.inner_optimizer),
                "initial_scale": self.initial_scale, "dynamic_growth_steps": self.dynamic_growth_steps}

    @classmethod
    def from_config(cls, config):
        cfg = dict(config)
        inner = cfg.pop("inner_optimizer", None)
        if inner is None:
            raise ValueError("LossScaleOptimizer config has no inner_optimizer")
        return cls(get(inner), **cfg)
