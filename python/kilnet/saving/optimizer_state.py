"""An optimizer's variables in Keras's order, for both file layouts.

Keras 3 keeps them as one list: iterations, learning_rate (absent when it is a schedule), then
the slot variables that each `add_optimizer_variables(vars, names)` call of the optimizer's
build() made, one call after another; a call with several names interleaves them per weight
(Adam: m_0, v_0, m_1, v_1, ...), separate calls do not (RMSprop: all velocities, then all
momentums). tf.keras 2 writes the same order without learning_rate. kilnet keeps each slot
as one flat buffer laid out like model.trainable_variables, so this maps (weight, slot) to a
slice of it. Reading goes by position, never by name, as Keras does.
"""
from __future__ import annotations

import math

import numpy as np

from kilnet.saving.errors import ModelFileError

__all__ = ["slot_groups", "optimizer_values", "restore_optimizer", "KERAS_SLOT_NAMES"]

KERAS_SLOT_NAMES = {"m": "momentum", "v": "velocity"}
_INTERLEAVED = {"Adam": (("m", "v"),), "AdamW": (("m", "v"),)}   # one build() call with two names


def slot_groups(opt):
    """The slots of `opt` grouped as Keras's build() creates them."""
    groups = getattr(opt, "keras_slot_groups", None) or _INTERLEAVED.get(type(opt).__name__)
    if groups is None:
        groups = tuple((s,) for s in opt.slots)
    return [g for g in groups if all(s in opt.slots for s in g)]


def _slices(model):
    """(variable, offset, size) of each trainable variable in the optimizer's flat state."""
    out, off = [], 0
    for v in model.trainable_variables:
        size = math.prod(v.shape)
        out.append((v, off, size))
        off += size
    return out


def _host(a):
    return np.asarray(a if isinstance(a, np.ndarray) else a.get(), np.float32)


def _has_schedule(opt):
    return opt.learning_rate_schedule is not None


def _loss_scaled(opt):
    return hasattr(opt, "inner_optimizer") and hasattr(opt, "dynamic_scale")


def optimizer_values(model, var_path, qualified=False, opt=None):
    """[(name, array)] in Keras's order; var_path(variable) names a weight ("dense/kernel").
    qualified: names start with "<optimizer name>/" (the .h5 layout). A LossScaleOptimizer is
    Keras 3's layout: its own iteration, learning_rate (both 0), step_counter and dynamic_scale,
    then the inner optimizer's variables."""
    opt = model.optimizer if opt is None else opt
    if _loss_scaled(opt):
        pre = f"{opt.name}/" if qualified else ""
        own = [(pre + "iteration", np.int64(0)), (pre + "learning_rate", np.float32(0.0)),
               (pre + "step_counter", np.int64(opt.step_counter)), (pre + "dynamic_scale", np.float32(opt.dynamic_scale))]
        return own + optimizer_values(model, var_path, qualified, opt.inner_optimizer)
    out = _plain_values(model, opt, var_path)
    return [(f"{opt.name}/{n}", v) for n, v in out] if qualified else out


def _plain_values(model, opt, var_path):
    out = [("iteration", np.int64(opt.iterations))]
    if not _has_schedule(opt):
        out.append(("learning_rate", np.float32(opt.learning_rate)))
    if not opt.state:
        return out
    for group in slot_groups(opt):
        for v, off, size in _slices(model):
            for slot in group:
                name = f"{var_path(v).replace('/', '_')}_{KERAS_SLOT_NAMES.get(slot, slot)}"
                out.append((name, _host(opt.state[slot][off:off + size]).reshape(v.shape)))
    return out


def restore_optimizer(model, values, where, opt=None):
    """Set iterations, learning rate and slots from `values`: the arrays in Keras's order
    (iteration first; learning_rate second when the file has it). A count that fits no
    layout of this optimizer raises ModelFileError. A LossScaleOptimizer reads its four
    variables, then its inner optimizer's (Keras 3's layout)."""
    opt = model.optimizer if opt is None else opt
    values = list(values)
    if _loss_scaled(opt):
        if len(values) < 4:
            raise ModelFileError(f"{where}: the file holds {len(values)} optimizer variables; a LossScaleOptimizer "
                                 "has 4 (iteration, learning_rate, step_counter, dynamic_scale) before its inner "
                                 "optimizer's")
        counter, scale = np.asarray(values[2], np.float64), np.asarray(values[3], np.float64)
        if counter.shape != () or not np.isfinite(counter) or counter < 0 or int(counter) != counter \
                or counter >= opt.dynamic_growth_steps:
            raise ModelFileError(f"{where}: bad LossScaleOptimizer step_counter {values[2]!r}")
        if scale.shape != () or not np.isfinite(scale) or scale <= 0:
            raise ModelFileError(f"{where}: bad LossScaleOptimizer dynamic_scale {values[3]!r}")
        restore_optimizer(model, values[4:], where, opt.inner_optimizer)
        opt.step_counter, opt.dynamic_scale = int(counter), float(scale)
        return
    slices = _slices(model)
    groups = slot_groups(opt)
    n_slots = sum(len(g) for g in groups) * len(slices)
    values = list(values)
    if len(values) == 1 + n_slots:
        has_lr = False
    elif len(values) == 2 + n_slots:
        has_lr = True
    elif len(values) in (1, 2):   # a file saved before the first step: no slots yet
        has_lr, n_slots = len(values) == 2, 0
    else:
        raise ModelFileError(f"{where}: the file holds {len(values)} optimizer variables; a "
                             f"{type(opt).__name__} for this model has {2 + n_slots} (iteration, learning "
                             f"rate, {n_slots} slot variables)")
    it = np.asarray(values[0])
    if it.shape != () or not np.isfinite(it) or it < 0 or it > 2**62 or int(it) != it:
        raise ModelFileError(f"{where}: bad optimizer iteration {values[0]!r}")
    lr = None
    if has_lr:
        lr = np.asarray(values[1], np.float64)
        if lr.shape != () or not np.isfinite(lr) or lr < 0:
            raise ModelFileError(f"{where}: bad optimizer learning rate {values[1]!r}")
    rest = iter(values[2 if has_lr else 1:])
    # The invariants of the optimizer's state (issue 22): second moments and accumulators are
    # sums of squares (>= 0); the iteration counter was checked above (an integer >= 0).
    nonnegative = set(getattr(opt, "nonnegative_slots", ()))
    if n_slots:
        params = model.flat_parameters()
        opt.build(params.size, like=params)
        for group in groups:
            for v, off, size in slices:
                for slot in group:
                    value = np.asarray(next(rest), np.float32)
                    if value.shape != tuple(v.shape):
                        raise ModelFileError(f"{where}: optimizer slot {slot!r} of {v.path!r} has shape "
                                             f"{value.shape}, the weight has {tuple(v.shape)}")
                    if slot in nonnegative and (value < 0).any():
                        raise ModelFileError(f"{where}: optimizer slot {slot!r} of {v.path!r} holds negative "
                                             f"values ({float(value.min())}); {type(opt).__name__} keeps it "
                                             ">= 0 (a sum of squares), and a negative one turns the weights NaN")
                    flat = opt.state[slot]
                    if isinstance(flat, np.ndarray):
                        flat[off:off + size] = value.reshape(-1)
                    else:   # state on the GPU
                        flat[off:off + size].set(np.ascontiguousarray(value.reshape(-1)))
    if n_slots and getattr(opt, "centered", False) and "average_gradient" in opt.state:
        # Centered RMSprop takes sqrt(v - a**2 + eps): a mean square below the squared mean
        # (impossible for real gradients) makes the step NaN.
        vel, avg = _host(opt.state["velocity"]), _host(opt.state["average_gradient"])
        bad = vel - avg * avg + np.float32(opt.epsilon) < 0
        if bad.any():
            i = int(np.argmax(bad))
            raise ModelFileError(f"{where}: RMSprop(centered=True) state has velocity {vel[i]} below the squared "
                                 f"average gradient {avg[i] ** 2} (flat index {i}); refused")
    opt.iterations = int(it)
    if lr is not None and not _has_schedule(opt) and np.float32(lr) != np.float32(opt.learning_rate):
        opt.learning_rate = float(np.float32(lr))   # changed while training (ReduceLROnPlateau)
