"""What compile() configures, per model output: the loss, its weight and the metrics.

Keras accepts each of loss, loss_weights and metrics as one value (for every output), a list
(in output order) or a dict keyed by output name; this resolves them once the model's outputs
are known (`bind`), prepares the targets, and turns predictions into the total loss Tensor.
"""
from __future__ import annotations

import copy

import numpy as np

from kilnet import losses as losses_mod
from kilnet import metrics as metrics_mod
from kilnet.engine.tensor import Tensor, add, multiply

__all__ = ["CompiledLoss", "LossTracker"]


class LossTracker(metrics_mod.Metric):
    """The running mean of the loss (the 'loss' entry of model.metrics)."""
    name = "loss"

    def update_state(self, values, y_pred=None, sample_weight=None):
        v = float(values.value if isinstance(values, Tensor) else values)
        self.total += v
        self.count += 1


class CompiledLoss:
    def __init__(self, loss, loss_weights, metrics, weighted_metrics=None):
        if loss is None:
            raise ValueError("compile: a loss is required (e.g. loss='sparse_categorical_crossentropy')")
        self.loss_spec, self.weight_spec, self.metric_spec = loss, loss_weights, metrics
        self.weighted_spec = weighted_metrics
        _check_spec("loss", loss)
        self.bound = False
        self.names: list = []
        self.tracker = LossTracker()
        if not isinstance(loss, (dict, list, tuple)):   # one loss: resolvable before bind (model.loss)
            self._single = losses_mod.get(loss)

    # -------------------------------------------------------------- resolving per output
    def bind(self, model, y_pred=None):
        """Resolve the specs for the model's outputs: names from model.output_keys() (or
        output_1, ... from y_pred's structure for subclassed models) and output shapes."""
        names = model.output_keys()
        shapes = model._output_shapes()
        if names is None or shapes is None:
            if y_pred is None:
                raise RuntimeError("internal: a subclassed model binds its losses from a first prediction")
            flat = y_pred if isinstance(y_pred, (list, tuple)) else (list(y_pred.values()) if isinstance(y_pred, dict)
                                                                      else [y_pred])
            shapes = [(None, *tuple(np.shape(_val(t)))[1:]) for t in flat]
            names = (list(y_pred) if isinstance(y_pred, dict) else
                     ["output"] if len(flat) == 1 else [f"output_{i + 1}" for i in range(len(flat))])
        self.names, self.shapes = list(names), [tuple(s) for s in shapes]
        n = len(self.names)
        self.losses = [losses_mod.get(x) if x is not None else None
                       for x in _per_output("loss", self.loss_spec, self.names)]
        if all(x is None for x in self.losses):
            raise ValueError("compile: no output has a loss")
        w = self.weight_spec
        self.weights = [1.0] * n if w is None else [1.0 if x is None else float(x)
                                                     for x in _per_output("loss_weights", w, self.names)]
        taken = set()
        self.metrics = self._build_metrics(self.metric_spec, "metrics", taken, weighted=False)
        self.weighted = self._build_metrics(self.weighted_spec, "weighted_metrics", taken, weighted=True)
        self.bound = True

    def _build_metrics(self, spec, what, taken, weighted):
        """Metric objects per output from one spec (a name/object, a list, a list of lists per
        output, or a dict by output name), named as Keras 3 logs them: '<output>_<name>' for
        several outputs; a weighted metric whose name is taken gets 'weighted_' in front."""
        n = len(self.names)
        mspec = spec or []
        if isinstance(mspec, (str, metrics_mod.Metric)):
            mspec = [mspec]
        if isinstance(mspec, dict):
            per = [_as_list(mspec.get(k)) for k in self.names]
            unknown = set(mspec) - set(self.names)
            if unknown:
                raise ValueError(f"compile: {what} names output(s) {sorted(unknown)} the model does not have; "
                                 f"outputs: {self.names}")
        elif n > 1 and mspec and all(isinstance(m, (list, tuple)) or m is None for m in mspec):
            if len(mspec) != n:
                raise ValueError(f"compile: {what} has {len(mspec)} lists for {n} outputs")
            per = [_as_list(m) for m in mspec]
        else:
            per = [list(mspec)] * n
        out = []
        for i, (ids, loss) in enumerate(zip(per, self.losses)):
            ms = []
            for m in ids:
                obj = metrics_mod.get(m, loss=loss, output_units=self.shapes[i][-1])
                if not isinstance(m, str) and (per.count(ids) > 1 or weighted):   # one object cannot serve two
                    obj = copy.deepcopy(obj)
                prefix = f"{self.names[i]}_" if n > 1 else ""
                name = prefix + obj.name
                if weighted and name in taken:
                    name = prefix + "weighted_" + obj.name
                obj.name = name
                taken.add(name)
                ms.append(obj)
            out.append(ms)
        return out

    def single_loss(self):
        if self.bound:
            return self.losses[0] if len(self.losses) == 1 else self.losses
        return getattr(self, "_single", None)

    def metric_objects(self) -> list:
        """Every compiled metric: the plain ones, then the weighted ones (Keras's log order)."""
        return [m for ms in self.metrics for m in ms] + [m for ms in self.weighted for m in ms]

    def update_metrics(self, metrics, preds, ybs, sws=None):
        """Update `metrics` (metric_objects() or a fresh copy of them, in that order) with one
        batch; weighted metrics get the batch's sample weights."""
        it = iter(metrics)
        for ms, p, t in zip(self.metrics, preds, ybs):
            for _ in ms:
                next(it).update(p, t)
        for i, (ms, p, t) in enumerate(zip(self.weighted, preds, ybs)):
            w = None if sws is None else sws[i]
            for _ in ms:
                next(it).update(p, t, w)

    def trackers(self, model) -> list:
        return [self.tracker] + (self.metric_objects() if self.bound else [])

    def log_names(self) -> list:
        """History keys, as Keras writes them: loss, <output>_loss (several outputs), metrics."""
        names = ["loss"]
        if len(self.names) > 1:
            names += [f"{k}_loss" for k, l in zip(self.names, self.losses) if l is not None]
        return names + [m.name for m in self.metric_objects()]

    def fresh_metrics(self):
        for m in self.metric_objects():
            m.reset_state()
        return self.metric_objects()

    # -------------------------------------------------------------- targets and the loss
    def split_targets(self, y, what):
        """y (an array, a list or a dict by output name) as a list in output order."""
        n = len(self.names)
        if isinstance(y, dict):
            unknown = [k for k in y if k not in self.names]
            if unknown:
                raise ValueError(f"{what}: y names output(s) {unknown} the model does not have; outputs: {self.names}")
            missing = [k for k, l in zip(self.names, self.losses) if l is not None and k not in y]
            if missing:
                raise ValueError(f"{what}: y has no targets for output(s) {missing}")
            return [y.get(k) for k in self.names]
        if isinstance(y, (list, tuple)) and n > 1:
            if len(y) != n:
                raise ValueError(f"{what}: the model has {n} outputs ({', '.join(self.names)}), y has {len(y)} arrays")
            return list(y)
        if n > 1:
            raise ValueError(f"{what}: the model has {n} outputs ({', '.join(self.names)}); pass y as a list or a "
                             "dict keyed by output name")
        return [y]

    def split_sample_weights(self, sample_weight, n, what):
        """sample_weight (one array for every output, a list in output order or a dict by output
        name) as a list of checked (n,) float32 arrays or None, one per output."""
        if sample_weight is None:
            return None
        k = len(self.names)
        if isinstance(sample_weight, dict):
            unknown = [key for key in sample_weight if key not in self.names]
            if unknown:
                raise ValueError(f"{what}: sample_weight names output(s) {unknown} the model does not have; "
                                 f"outputs: {self.names}")
            per = [sample_weight.get(key) for key in self.names]
        elif isinstance(sample_weight, (list, tuple)) and k > 1:
            if len(sample_weight) != k:
                raise ValueError(f"{what}: the model has {k} outputs, sample_weight has {len(sample_weight)} arrays")
            per = list(sample_weight)
        else:
            per = [sample_weight] * k
        out = [losses_mod.check_sample_weight(w, n, what) for w in per]
        return None if all(w is None for w in out) else out

    def prepare_targets(self, ys) -> list:
        return [None if (loss is None or y is None) else loss.prepare_targets(y, shape)
                for loss, y, shape in zip(self.losses, ys, self.shapes)]

    def loss_tensor(self, y_pred, y, sample_weight=None):
        """Total loss Tensor of y_pred against raw targets y (a custom train_step's path)."""
        preds = _outputs_list(y_pred, self.names)
        ys = self.split_targets(y, "compute_loss")
        sws = None
        if sample_weight is not None:
            sws = self.split_sample_weights(sample_weight, int(np.shape(_val(preds[0]))[0]), "compute_loss")
        total = None
        for i, (loss, w, p, t) in enumerate(zip(self.losses, self.weights, preds, ys)):
            if loss is None:
                continue
            l = loss(t, p if isinstance(p, Tensor) else Tensor(np.asarray(p, np.float32)),
                     sample_weight=None if sws is None else sws[i])
            l = multiply(l, w) if w != 1.0 else l
            total = l if total is None else add(total, l)
        return total

    def step_loss(self, y_pred, ys, bufs, loss_out=None, sws=None):
        """The trainer's path: y_pred (the model's output structure of Tensors) against
        prepared targets (and per-output sample weights on the device, or None); reuses the
        buffers in `bufs`. Returns (total Tensor, per-output loss
        Tensors, per-output predictions for the metrics)."""
        preds = _outputs_list(y_pred, self.names)
        total, parts, outs = None, [], []
        for i, (loss, w, p, t) in enumerate(zip(self.losses, self.weights, preds, ys)):
            if loss is None:
                parts.append(None)
                outs.append(p.value)
                continue
            shape = (p._keras_logits[1] if p._keras_logits is not None else p).shape   # not reading p
            lt, pred = losses_mod.loss_op(loss, p, t, bufs.get(("probs", i), shape, shape[0]),
                                          bufs.get(("grad", i), shape, shape[0]),
                                          loss_out if len(self.names) == 1 else None,
                                          None if sws is None else sws[i])
            parts.append(lt)
            outs.append(pred)
            lw = multiply(lt, w) if w != 1.0 else lt
            total = lw if total is None else add(total, lw)
        return total, parts, outs


def _val(t):
    return t.value if isinstance(t, Tensor) else t


def _outputs_list(y_pred, names):
    if isinstance(y_pred, dict):
        return [y_pred[k] for k in names]
    if isinstance(y_pred, (list, tuple)):
        return list(y_pred)
    return [y_pred]


def _as_list(v):
    if v is None:
        return []
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _check_spec(what, spec):
    if isinstance(spec, dict):
        for k in spec:
            if not isinstance(k, str):
                raise TypeError(f"compile: {what} dict keys must be output names, got {k!r}")


def _per_output(what, spec, names):
    """One value per output from one value, a list or a dict keyed by output name."""
    n = len(names)
    if isinstance(spec, dict):
        unknown = [k for k in spec if k not in names]
        if unknown:
            raise ValueError(f"compile: {what} names output(s) {unknown} the model does not have; outputs: {names}")
        return [spec.get(k) for k in names]
    if isinstance(spec, (list, tuple)):
        if len(spec) != n:
            raise ValueError(f"compile: {what} has {len(spec)} entries for {n} output(s) ({', '.join(names)})")
        return list(spec)
    return [spec] * n
