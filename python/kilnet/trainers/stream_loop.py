"""fit, evaluate and predict over batches from Python data code (generators, PyDataset, torch
DataLoaders: trainers/data_adapters.py reads them). The step is the array path's
(trainer.default_train_step, the compiled loss and metrics, a custom train_step/test_step);
what differs is where the batches come from and that the epoch ends when the data says so.

The first batch is prepared here (it builds the model and binds the losses); after that the
data thread prepares each batch (checks, float32, targets, sample weights) while the previous
one trains.
"""
from __future__ import annotations

import math
import time
import warnings

import numpy as np

from kilnet import regularizers as regularizers_mod
from kilnet.callbacks import CallbackList, History
from kilnet.engine import node as node_mod
from kilnet.engine.state import using_pool
from kilnet.trainers import trainer as tr
from kilnet.trainers.data_adapters import INTERRUPTED, DataStream, is_stream
from kilnet.trainers.policy import verbosity
from kilnet.trainers.progress import _Progress

__all__ = ["fit", "evaluate", "predict", "StreamValidation", "is_stream"]


# ---------------------------------------------------------------------- preparing batches
def _check_args(what, stream, y, sample_weight, class_weight=None):
    if y is not None:
        raise ValueError(f"{what}: when x is a {stream.kind}, do not pass y; the targets are part of each "
                         "batch: (x, y) or (x, y, sample_weight)")
    if sample_weight is not None:
        raise ValueError(f"{what}: when x is a {stream.kind}, do not pass sample_weight; yield (x, y, "
                         "sample_weight) batches instead")
    if class_weight is not None and not stream.is_pydataset:
        raise ValueError(f"{what}: class_weight is not supported for a {stream.kind} (as in Keras 3); yield "
                         "(x, y, sample_weight) batches, or use a PyDataset")


def _labelled(fn, what):
    """fn(batch, label) as (batch, index) -> ..., its errors naming the batch."""
    def run(batch, index):
        label = f"{what} (batch {index})"
        try:
            return fn(batch, label)
        except (ValueError, TypeError) as e:
            if type(e) in (ValueError, TypeError) and label not in str(e):
                raise type(e)(f"{label}: {e}") from e
            raise
    return run


def _xy_preparer(model, class_weight):
    """(batch, label) -> (inputs, targets, sample weights) for fit/evaluate; builds and binds
    the model on the first batch, after that only reads it (safe on the data thread)."""
    def prepare(batch, label):
        x, y, sw = batch
        if y is None:
            raise ValueError(f"{label}: the batch has no targets; fit and evaluate need (x, y) or "
                             "(x, y, sample_weight) batches")
        inputs = tr._Inputs(model, x, label)
        if not model.built or not model.compiled.bound:
            tr._bind(model, inputs)
        return tr._prepare_bound(model, inputs, y, label, sw, class_weight)
    return prepare


class _Batches:
    """One stream's prepared batches: the first prepared here, then by the data thread."""

    def __init__(self, model, stream, fn, on_bound=None):
        self.model, self.stream = model, stream
        self.prepare = _labelled(fn, stream.what)
        self.on_bound = on_bound
        self.bound = False

    def epoch(self):
        for index, batch, prepared in self.stream.epoch():
            if prepared is None:
                prepared = self.prepare(batch, index)
            if not self.bound:
                self.bound = True
                self.model._consolidate()
                if self.on_bound is not None:
                    self.on_bound()
                self.stream.set_prepare(self.prepare)
            yield index, prepared


def _device_batch(model, inputs, ys, sws):
    return (inputs.rebuild(tr._on_device(model, inputs.arrays)), tr._on_device(model, ys),
            None if sws is None else tr._on_device(model, sws))


def _noted(e, what, index, kind):
    e.add_note(f"{what}: raised on batch {index} of the {kind}")


# ---------------------------------------------------------------------- fit
def fit(model, x, y, batch_size, epochs, verbose, callbacks, validation_split, validation_data, shuffle,
        class_weight, sample_weight, initial_epoch, steps_per_epoch, validation_steps, validation_batch_size,
        validation_freq, distributed):
    model._require_compiled("fit")
    if not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"fit: epochs must be a non-negative int, got {epochs!r}")
    if distributed:
        raise ValueError("fit: distributed=True needs arrays (each rank takes its share of every batch)")
    if validation_split:
        raise ValueError("fit: validation_split needs arrays; with a generator or PyDataset pass validation_data")
    stream = DataStream(x, "fit", steps_per_epoch, shuffle)
    _check_args("fit", stream, y, sample_weight, class_weight)
    val = None
    try:
        with model._exclusive("fit", reentrant=False):
            val = _validation(model, validation_data, validation_steps, validation_batch_size or batch_size)
            return _train(model, stream, class_weight, int(epochs), verbose, callbacks, int(initial_epoch),
                          val, validation_freq)
    finally:
        stream.close()
        if isinstance(val, StreamValidation):
            val.close()


def _validation(model, validation_data, validation_steps, batch_size):
    """A callable model -> [loss, metrics...] (or None when the data had nothing left)."""
    if validation_data is None:
        return None
    if is_stream(validation_data):
        return StreamValidation(validation_data, validation_steps)
    if validation_steps is not None:
        raise ValueError("fit: validation_steps applies to validation_data given as a generator, PyDataset or "
                         "other iterable of batches")
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
        raise ValueError("fit: validation_data must be a tuple (x_val, y_val) or (x_val, y_val, sample_weight_val), "
                         "or a generator, PyDataset or other iterable of batches")
    vsw = validation_data[2] if len(validation_data) == 3 else None
    prepared = []

    def run(model, _batch_size):
        if not prepared:   # after the first training batch built the model
            prepared.append(tr._prepare_xy(model, validation_data[0], validation_data[1],
                                           "fit (validation_data)", vsw))
        return tr._evaluate_arrays(model, prepared[0], tr._check_batch_size(batch_size, "fit"))
    return run


class StreamValidation:
    """validation_data read from a stream, kept across epochs (validation_steps continue one
    pass, as Keras's cached evaluation iterator). A one-shot generator without validation_steps
    is read once and its prepared batches kept for the later epochs (Keras 3 would replay only
    the two batches it peeked at). Called as model -> values or None."""

    def __init__(self, data, steps):
        self.stream = DataStream(data, "fit (validation_data)", steps, shuffle=False)
        self.kept = [] if self.stream.one_shot and steps is None else None

    def __call__(self, model, batch_size=None):
        if self.kept:
            vals = _evaluate_stream(model, self.stream, iter(self.kept))
        else:
            vals = _evaluate_stream(model, self.stream, keep=self.kept)
        if vals is None:
            warnings.warn("fit: validation_data had no batches left this epoch (a generator is read once; pass "
                          "validation_steps with one that repeats, or a PyDataset); no val_ logs this epoch",
                          UserWarning, stacklevel=4)
        return vals

    def close(self):
        self.stream.close()


def _train(model, stream, class_weight, epochs, verbose, callbacks, initial_epoch, val, validation_freq):
    verbose = verbosity(verbose)
    history = History()
    params = {"epochs": epochs, "steps": stream.epoch_steps, "verbose": verbose}
    cbs = CallbackList(list(callbacks or []) + [history], model, params)
    model.history = history
    model.stop_training = False
    custom = model._overrides("train_step")
    compiled = model.compiled

    def built():
        model.optimizer.build(model._params.size, [off for _, _, off, _ in model._slices] + [model._params.size],
                              like=model._params)
    batches = _Batches(model, stream, _xy_preparer(model, class_weight), built)
    known_steps = stream.epoch_steps
    nan_warned, logs, trained = False, None, False
    cbs.on_train_begin({})
    for epoch in range(initial_epoch, epochs):
        cbs.on_epoch_begin(epoch, {})
        stream.on_epoch_begin()
        loss_sum, seen, step, t0 = 0.0, 0, 0, time.perf_counter()
        bar = _Progress(epoch, epochs, known_steps, verbose)
        metrics, custom_logs, part_sums = None, None, None
        for step, (index, (inputs, ys, sws)) in enumerate(batches.epoch()):
            cbs.on_train_batch_begin(step, {})
            if metrics is None:   # the model is bound by now
                metrics = compiled.fresh_metrics()
                compiled.tracker.reset_state()
                part_sums = np.zeros(len(compiled.names)) if len(compiled.names) > 1 else None
            xb, ybs, swb = _device_batch(model, inputs, ys, sws)
            try:
                if custom:
                    custom_logs = tr._logs_dict(model.train_step(tr._user_data(compiled, xb, ybs, swb)))
                    loss = float(custom_logs.get("loss", 0.0))
                else:
                    loss, preds = tr.default_train_step(model, (xb, ybs, swb))
                    compiled.update_metrics(metrics, preds, ybs, swb)
                    if part_sums is not None:
                        part_sums += [0.0 if p is None else float(p.value) * inputs.n for p in compiled.last_parts]
            except Exception as e:
                _noted(e, "fit", index, stream.kind)
                raise
            loss_sum += loss * inputs.n
            seen += inputs.n
            logs = dict(custom_logs) if custom_logs is not None else \
                {"loss": loss_sum / seen, **{m.name: m.result() for m in metrics}}
            if not nan_warned and not math.isfinite(logs.get("loss", 0.0)):
                nan_warned = True
                tr._warn_nan(logs["loss"], epoch, step)
            cbs.on_train_batch_end(step, logs)
            bar.update(step + 1, logs)
            if model.stop_training:
                break
        stream.on_epoch_end()
        if seen == 0:
            if not trained:
                raise ValueError(f"fit: the {stream.kind} yielded no batches")
            warnings.warn(INTERRUPTED, UserWarning, stacklevel=3)
            break
        trained = True
        steps_done = step + 1
        known_steps = known_steps or steps_done
        if part_sums is not None and custom_logs is None:
            logs = tr._with_output_losses(compiled, logs, part_sums / seen)
        if val is not None and (epoch + 1) % validation_freq == 0:
            vals = val(model, None)
            if vals is not None:
                logs.update({"val_" + k: v for k, v in zip(tr._eval_names(model), vals)})
        bar.finish(logs, time.perf_counter() - t0, steps_done)
        cbs.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    cbs.on_train_end(logs if trained else None)
    return history


# ---------------------------------------------------------------------- evaluate / predict
def evaluate(model, x, y, verbose, sample_weight, steps, return_dict):
    model._require_compiled("evaluate")
    stream = DataStream(x, "evaluate", steps)
    _check_args("evaluate", stream, y, sample_weight)
    try:
        with model._guard("evaluate"):
            values = _evaluate_stream(model, stream)
    finally:
        stream.close()
    if values is None:
        raise ValueError(f"evaluate: the {stream.kind} yielded no batches")
    names = tr._eval_names(model)
    if verbosity(verbose):
        print(" - ".join(f"{k}: {v:.4f}" for k, v in zip(names, values)), flush=True)
    if return_dict:
        return dict(zip(names, values))
    return values[0] if len(values) == 1 else values


def _evaluate_stream(model, stream, batches=None, keep=None):
    """[loss, (per-output losses,) metrics...] over one epoch of the stream (or over `batches`,
    prepared before), or None when it had no batches (as trainer._evaluate_arrays for arrays).
    keep: a list that receives the prepared batches."""
    compiled = model.compiled
    custom = model._overrides("test_step")
    st = tr._step_state(model, "test")
    if batches is None:
        batches = _Batches(model, stream, _xy_preparer(model, None)).epoch()
    stream.on_epoch_begin()
    totals, metrics, n = None, None, 0
    for index, (inputs, ys, sws) in batches:
        if keep is not None:
            keep.append((index, (inputs, ys, sws)))
        if metrics is None:
            n_out = len(compiled.names)
            metrics = tr._metric_copies(compiled)
            totals = np.zeros(1 + (n_out if n_out > 1 else 0), np.float64)
        xb, ybs, swb = _device_batch(model, inputs, ys, sws)
        k = inputs.n
        try:
            if custom:
                logs = tr._logs_dict(model.test_step(tr._user_data(compiled, xb, ybs, swb)))
                totals[0] += logs.get("loss", 0.0) * k
            else:
                total, parts, preds = tr._test_batch(model, st, xb, ybs, swb)
                totals[0] += float(total.value) * k
                if len(totals) > 1:
                    totals[1:] += [0.0 if p is None else float(p.value) * k for p in parts]
                compiled.update_metrics(metrics, preds, ybs, swb)
        except Exception as e:
            _noted(e, stream.what, index, stream.kind)
            raise
        n += k
    stream.on_epoch_end()
    if n == 0:
        return None
    totals /= n
    totals[0] += regularizers_mod.penalties(model._flat_layers(), grads=False) if model.trainable else 0.0
    return [float(v) for v in totals] + [m.result() for m in metrics]


def predict(model, x, steps):
    """The model's outputs over one epoch of the stream, concatenated along the batch axis."""
    stream = DataStream(x, "predict", steps)

    def prepare(batch, label):
        inputs = tr._Inputs(model, batch[0], label)
        if not model.built:
            tr._bind_build_only(model, inputs)
        return inputs
    try:
        with model._guard("predict"):
            batches = _Batches(model, stream, prepare)
            st = tr._step_state(model, "predict")
            outs, structure = None, None
            stream.on_epoch_begin()
            for index, inputs in batches.epoch():
                try:
                    with using_pool(st.pool):
                        y = model(inputs.rebuild(tr._on_device(model, inputs.arrays)), training=False)
                except Exception as e:
                    _noted(e, "predict", index, stream.kind)
                    raise
                leaves = node_mod.flatten(y)
                if outs is None:
                    structure, outs = y, [[] for _ in leaves]
                for o, t in zip(outs, leaves):   # copies: the layers reuse their output buffers
                    v = t.value
                    o.append(np.array(v, np.float32 if v.dtype.kind == "f" else v.dtype) if isinstance(v, np.ndarray)
                             else v.get())
            stream.on_epoch_end()
    finally:
        stream.close()
    if outs is None:
        raise ValueError(f"predict: the {stream.kind} yielded no batches")
    return tr._restructure(structure, [np.concatenate(o, axis=0) for o in outs])
