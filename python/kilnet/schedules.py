"""Learning-rate schedules with Keras names, arguments and formulas (keras.optimizers.schedules).

A schedule is a callable of the optimizer step (the number of updates done before this one,
counting from 0) that returns the learning rate for that update. Every kilnet optimizer takes
one as learning_rate=, and writes it into its config in Keras's serialized form
{"class_name": "ExponentialDecay", "config": {...}}, so a saved model keeps its schedule.

  ExponentialDecay:        lr0 * decay_rate ** (step / decay_steps)   (staircase: floor the exponent)
  CosineDecay:             lr0 * ((1 - alpha) * 0.5 * (1 + cos(pi * min(step, decay_steps) / decay_steps)) + alpha),
                           optionally after a linear warmup from lr0 to warmup_target over warmup_steps
                           (then the decay starts from warmup_target)
  PiecewiseConstantDecay:  values[0] for step <= boundaries[0], values[i] for
                           boundaries[i-1] < step <= boundaries[i], values[-1] after the last boundary
"""
from __future__ import annotations

import math

from kilnet.utils import lookup

__all__ = ["LearningRateSchedule", "ExponentialDecay", "CosineDecay", "PiecewiseConstantDecay",
           "get", "serialize"]


def _number(name, value, who, positive=False):
    if isinstance(value, bool):
        raise TypeError(f"{who}: {name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{who}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or (positive and v <= 0):
        raise ValueError(f"{who}: {name} must be {'a positive' if positive else 'a finite'} number, got {value!r}")
    return v


class LearningRateSchedule:
    """Base class: subclasses define __call__(step) -> learning rate, and get_config."""

    def __call__(self, step):
        raise NotImplementedError

    def get_config(self) -> dict:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"{type(self).__name__}({self.get_config()})"


class ExponentialDecay(LearningRateSchedule):
    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False, name="ExponentialDecay"):
        who = "ExponentialDecay"
        self.initial_learning_rate = _number("initial_learning_rate", initial_learning_rate, who)
        self.decay_steps = _number("decay_steps", decay_steps, who, positive=True)
        self.decay_rate = _number("decay_rate", decay_rate, who)
        self.staircase = bool(staircase)
        self.name = name

    def __call__(self, step):
        p = step / self.decay_steps
        if self.staircase:
            p = math.floor(p)
        return self.initial_learning_rate * self.decay_rate ** p

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": _int_if_whole(self.decay_steps),
                "decay_rate": self.decay_rate, "staircase": self.staircase, "name": self.name}


class CosineDecay(LearningRateSchedule):
    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay", warmup_target=None,
                 warmup_steps=0):
        who = "CosineDecay"
        self.initial_learning_rate = _number("initial_learning_rate", initial_learning_rate, who)
        self.decay_steps = _number("decay_steps", decay_steps, who, positive=True)
        self.alpha = _number("alpha", alpha, who)
        self.name = name
        self.warmup_target = None if warmup_target is None else _number("warmup_target", warmup_target, who)
        self.warmup_steps = _number("warmup_steps", warmup_steps, who)
        if self.warmup_steps < 0:
            raise ValueError(f"{who}: warmup_steps must be >= 0, got {warmup_steps!r}")
        if self.warmup_target is not None and self.warmup_steps == 0:
            # Keras would divide by zero in the warmup branch; say so instead.
            raise ValueError(f"{who}: warmup_target needs warmup_steps > 0")

    def _decay(self, step, from_lr):
        fraction = step / self.decay_steps
        cosine = 0.5 * (1.0 + math.cos(math.pi * fraction))
        return from_lr * ((1 - self.alpha) * cosine + self.alpha)

    def __call__(self, step):
        if self.warmup_target is None:
            return self._decay(min(step, self.decay_steps), self.initial_learning_rate)
        step = min(step, self.decay_steps + self.warmup_steps)
        if step < self.warmup_steps:
            delta = self.warmup_target - self.initial_learning_rate
            return delta * (step / self.warmup_steps) + self.initial_learning_rate
        return self._decay(step - self.warmup_steps, self.warmup_target)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "decay_steps": _int_if_whole(self.decay_steps),
                "alpha": self.alpha, "name": self.name, "warmup_target": self.warmup_target,
                "warmup_steps": _int_if_whole(self.warmup_steps)}


class PiecewiseConstantDecay(LearningRateSchedule):
    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        who = "PiecewiseConstantDecay"
        try:
            boundaries, values = list(boundaries), list(values)
        except TypeError:
            raise TypeError(f"{who}: boundaries and values must be lists of numbers") from None
        if len(boundaries) != len(values) - 1 or not boundaries:
            raise ValueError(f"{who}: needs one more value than boundaries (and at least one boundary), got "
                             f"{len(boundaries)} boundaries and {len(values)} values")
        self.boundaries = [_number("boundaries", b, who) for b in boundaries]
        self.values = [_number("values", v, who) for v in values]
        if any(b >= c for b, c in zip(self.boundaries, self.boundaries[1:])):
            raise ValueError(f"{who}: boundaries must be strictly increasing, got {boundaries!r}")
        self.name = name

    def __call__(self, step):
        for b, v in zip(self.boundaries, self.values):
            if step <= b:
                return v
        return self.values[-1]

    def get_config(self):
        return {"boundaries": [_int_if_whole(b) for b in self.boundaries], "values": self.values, "name": self.name}


def _int_if_whole(v):
    """Step counts go back into a config as ints, as the user wrote them."""
    return int(v) if float(v).is_integer() else v


_CLASSES = {cls.__name__: cls for cls in (ExponentialDecay, CosineDecay, PiecewiseConstantDecay)}


def get(identifier):
    """A schedule from an instance or a serialized dict ({"class_name": ..., "config": {...}})."""
    if isinstance(identifier, LearningRateSchedule):
        return identifier
    if isinstance(identifier, dict):
        cls = lookup("learning-rate schedule", _CLASSES, identifier.get("class_name"))
        try:
            return cls.from_config(identifier.get("config") or {})
        except TypeError as e:
            raise ValueError(f"learning-rate schedule {cls.__name__}: bad config ({e})") from None
    raise TypeError(f"cannot interpret {identifier!r} as a learning-rate schedule")


def serialize(schedule: LearningRateSchedule) -> dict:
    return {"module": "keras.optimizers.schedules", "class_name": type(schedule).__name__,
            "config": schedule.get_config(), "registered_name": None}
