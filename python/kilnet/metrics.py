"""Metrics with Keras names. Each keeps a running (sum, count) over an epoch.

'accuracy' is resolved the way Keras resolves it, from the loss: sparse categorical accuracy
after a sparse categorical cross-entropy, categorical accuracy after a categorical one, binary
accuracy after a binary one (or for a single output unit).
"""
from __future__ import annotations

import numpy as np

from kilnet.backend import is_cuda_array, xp_for
from kilnet.utils import lookup

__all__ = ["Metric", "Accuracy", "SparseCategoricalAccuracy", "CategoricalAccuracy",
           "BinaryAccuracy", "MeanAbsoluteError", "MeanSquaredError", "get", "confusion_matrix",
           "classification_report", "per_group", "PerGroupReport", "group_rates",
           "demographic_parity_difference", "equalized_odds_difference"]


class Metric:
    name = "metric"

    def __init__(self, name=None):
        if name is not None:
            self.name = name
        self.reset_state()

    def reset_state(self):
        self.total = 0.0
        self.count = 0
        self._dev_total = None   # on the GPU the sum stays on the device until result()

    def batch_values(self, y_pred, y_true) -> np.ndarray:
        """Per-sample values for one batch (targets already prepared by the loss)."""
        raise NotImplementedError

    def update(self, y_pred, y_true, sample_weight=None):
        v = self.batch_values(y_pred, y_true)
        if sample_weight is not None:
            # Keras's weighted mean: sum(w * value) / sum(w), a sample's weight on each of its values
            xp = xp_for(v)
            w = xp.broadcast_to(xp.asarray(sample_weight, np.float64).reshape((-1,) + (1,) * (v.ndim - 1)), v.shape)
            self.total += float((v * w).sum())
            self.count += float(w.sum())
            return
        if is_cuda_array(v):   # no float(): that would wait for the GPU every batch
            s = v.sum(dtype="float64")
            self._dev_total = s if self._dev_total is None else self._dev_total + s
        else:
            self.total += float(v.sum())
        self.count += int(v.size)

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Keras's call order."""
        self.update(np.asarray(y_pred, np.float32), np.asarray(y_true), sample_weight)

    def result(self) -> float:
        if self._dev_total is not None:
            self.total += float(self._dev_total)
            self._dev_total = None
        return self.total / self.count if self.count else 0.0

    def _scratch(self, key, n, dtype):
        """A 1-D array of n elements kept across batches, so that fit's step allocates no arrays."""
        buf = self.__dict__.get(key)
        if buf is None or buf.size < n:
            buf = np.empty(n, dtype)
            setattr(self, key, buf)
        return buf[:n]

    def _count_hits(self, pred, true):
        hit = self._scratch("_hit", pred.size, np.bool_)
        np.equal(pred, true, out=hit)
        self.total += float(np.count_nonzero(hit))
        self.count += int(hit.size)


def _argmax_rows(metric, key, a):
    """argmax over the last axis into the metric's kept buffer (np.argmax allocates otherwise)."""
    rows = np.asarray(a).reshape(-1, np.shape(a)[-1])
    return np.argmax(rows, axis=-1, out=metric._scratch(key, rows.shape[0], np.intp))


class SparseCategoricalAccuracy(Metric):
    name = "sparse_categorical_accuracy"

    def batch_values(self, y_pred, y_true):
        xp = xp_for(y_pred)
        return xp.argmax(y_pred, axis=-1) == xp.asarray(y_true).reshape(y_pred.shape[:-1])

    def update(self, y_pred, y_true, sample_weight=None):   # batch_values without the temporaries
        if is_cuda_array(y_pred) or sample_weight is not None:
            return super().update(y_pred, y_true, sample_weight)
        self._count_hits(_argmax_rows(self, "_pred", y_pred), np.asarray(y_true).reshape(-1))


class CategoricalAccuracy(Metric):
    name = "categorical_accuracy"

    def batch_values(self, y_pred, y_true):
        xp = xp_for(y_pred)
        return xp.argmax(y_pred, axis=-1) == xp.argmax(y_true, axis=-1)

    def update(self, y_pred, y_true, sample_weight=None):   # batch_values without the temporaries
        if is_cuda_array(y_pred) or sample_weight is not None:
            return super().update(y_pred, y_true, sample_weight)
        self._count_hits(_argmax_rows(self, "_pred", y_pred), _argmax_rows(self, "_true", y_true))


class BinaryAccuracy(Metric):
    name = "binary_accuracy"

    def __init__(self, name=None, threshold=0.5):
        self.threshold = float(threshold)
        super().__init__(name)

    def batch_values(self, y_pred, y_true):
        return (y_pred > self.threshold) == (xp_for(y_pred).asarray(y_true) > self.threshold)


class Accuracy(Metric):
    """Exact equality of prediction and target (keras.metrics.Accuracy)."""
    name = "accuracy"

    def batch_values(self, y_pred, y_true):
        return y_pred == xp_for(y_pred).asarray(y_true)


class MeanAbsoluteError(Metric):
    name = "mean_absolute_error"

    def batch_values(self, y_pred, y_true):
        return xp_for(y_pred).abs(y_pred - y_true)


class MeanSquaredError(Metric):
    name = "mean_squared_error"

    def batch_values(self, y_pred, y_true):
        return xp_for(y_pred).square(y_pred - y_true)


_ALIASES = {
    "mae": MeanAbsoluteError, "mean_absolute_error": MeanAbsoluteError,
    "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "categorical_accuracy": CategoricalAccuracy,
    "binary_accuracy": BinaryAccuracy,
    "accuracy": None, "acc": None,   # resolved from the loss
}


def get(identifier, loss=None, output_units=None) -> Metric:
    """A metric from an instance or a Keras name. 'accuracy'/'acc' pick the variant that fits the
    loss, and keep the name the user wrote (so History has history['accuracy'])."""
    if isinstance(identifier, Metric):
        return identifier
    if not isinstance(identifier, str):
        raise TypeError(f"cannot interpret {identifier!r} as a metric; pass a kilnet.metrics.Metric or a name")
    cls = lookup("metric", _ALIASES, identifier)
    if cls is None:
        from kilnet import losses
        if isinstance(loss, losses.SparseCategoricalCrossentropy):
            cls = SparseCategoricalAccuracy
        elif isinstance(loss, losses.CategoricalCrossentropy):
            cls = CategoricalAccuracy
        elif isinstance(loss, losses.BinaryCrossentropy) or output_units == 1:
            cls = BinaryAccuracy
        else:
            cls = CategoricalAccuracy
        return cls(name=identifier.lower())
    return cls(name=identifier.lower() if identifier.lower() in ("mae", "mse") else None)


# ------------------------------------------------------------------------ evaluation reports
def _labels(y, what):
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:      # one-hot or probabilities
        y = y.argmax(axis=1)
    y = y.reshape(-1)
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or (y != np.round(y)).any():
            raise ValueError(f"{what} must be class indices (or one-hot / probability rows)")
    elif y.dtype.kind not in "iub":
        raise TypeError(f"{what} must be class indices, got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise ValueError(f"{what} contains a negative class index")
    return y.astype(np.int64)


def confusion_matrix(y_true, y_pred, num_classes=None) -> np.ndarray:
    """Counts[i, j] = number of samples of true class i predicted as class j. y_pred may be
    class indices or rows of scores (the argmax is taken)."""
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if len(t) != len(p):
        raise ValueError(f"y_true and y_pred have different lengths ({len(t)} and {len(p)})")
    n = int(num_classes or (max(t.max(initial=-1), p.max(initial=-1)) + 1))
    if t.size and (t.max() >= n or p.max() >= n):
        raise ValueError(f"a class index is >= num_classes={n}")
    return np.bincount(t * n + p, minlength=n * n).reshape(n, n)


def classification_report(y_true, y_pred, num_classes=None, target_names=None, output_dict=False):
    """Per-class precision, recall, F1 and support, plus accuracy and macro averages (the
    figures scikit-learn's classification_report gives). A text table, or a dict with
    output_dict=True."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    names = list(target_names) if target_names is not None else [str(i) for i in range(len(cm))]
    if len(names) != len(cm):
        raise ValueError(f"target_names has {len(names)} names for {len(cm)} classes")
    report = {n: {"precision": float(p), "recall": float(r), "f1-score": float(f), "support": int(s)}
              for n, p, r, f, s in zip(names, precision, recall, f1, support)}
    total = int(support.sum())
    report["accuracy"] = float(tp.sum() / total) if total else 0.0
    report["macro avg"] = {"precision": float(precision.mean()), "recall": float(recall.mean()),
                           "f1-score": float(f1.mean()), "support": total}
    if output_dict:
        return report
    w = max(12, max(len(n) for n in names) + 2)
    lines = [f"{'':<{w}}{'precision':>10}{'recall':>10}{'f1-score':>10}{'support':>10}"]
    for n in names:
        r = report[n]
        lines.append(f"{n:<{w}}{r['precision']:>10.4f}{r['recall']:>10.4f}{r['f1-score']:>10.4f}{r['support']:>10}")
    lines.append(f"{'accuracy':<{w}}{'':>20}{report['accuracy']:>10.4f}{total:>10}")
    m = report["macro avg"]
    lines.append(f"{'macro avg':<{w}}{m['precision']:>10.4f}{m['recall']:>10.4f}{m['f1-score']:>10.4f}{total:>10}")
    return "\n".join(lines)


# ------------------------------------------------------------------------ group fairness
def _groups(groups, n, what="groups"):
    """One hashable label per sample, as a 1-D array (an (n, 1) column is accepted)."""
    g = np.asarray(groups)
    if g.ndim == 2 and g.shape[1] == 1:
        g = g[:, 0]
    if g.ndim != 1:
        raise ValueError(f"{what} must give one group label per sample (a 1-D array), got shape {g.shape}")
    if len(g) != n:
        raise ValueError(f"{what} has {len(g)} entries for {n} samples; it needs one label per sample")
    if n == 0:
        raise ValueError(f"{what}: no samples")
    if g.dtype.kind == "f" and np.isnan(g).any():
        raise ValueError(f"{what} contains NaN")
    if g.dtype.kind == "O" and any(v is None for v in g):
        raise ValueError(f"{what} contains None")
    return g


def _binary(y, what, pos_label=1, threshold=0.5):
    """Whether each sample is (predicted / labelled) the positive class, as a bool array.

    Class indices, one-hot or probability rows (argmax), or a single probability per sample
    (column of shape (n,) or (n, 1) with values in [0, 1] that are not all 0/1: > threshold)."""
    a = np.asarray(y)
    if a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim == 1 and a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise ValueError(f"{what} contains NaN or Inf")
        if (a != np.round(a)).any():
            if a.min() < 0 or a.max() > 1:
                raise ValueError(f"{what}: scores outside [0, 1] are neither labels nor probabilities")
            return a > threshold
    return _labels(a, what) == pos_label


def _key(g):
    return g.item() if hasattr(g, "item") else g


def group_rates(y_true, y_pred, groups, pos_label=1, threshold=0.5) -> dict:
    """Per group: count, selection rate P(pred positive), true positive rate P(pred + | true +),
    false positive rate P(pred + | true -), accuracy, and the numbers of true positives and
    negatives. A rate with no sample to measure it on is NaN.

    y_true, y_pred: class indices (the positive class is pos_label; others are negative),
    one-hot / probability rows, or one probability per sample (thresholded). groups: one label
    per sample."""
    t = _binary(y_true, "y_true", pos_label, threshold)
    p = _binary(y_pred, "y_pred", pos_label, threshold)
    if len(t) != len(p):
        raise ValueError(f"y_true and y_pred have different lengths ({len(t)} and {len(p)})")
    g = _groups(groups, len(t))
    out = {}
    for v in np.unique(g):
        m = g == v
        tm, pm = t[m], p[m]
        npos, nneg = int(tm.sum()), int((~tm).sum())
        out[_key(v)] = {
            "count": int(m.sum()),
            "selection_rate": float(pm.mean()),
            "tpr": float((pm & tm).sum() / npos) if npos else float("nan"),
            "fpr": float((pm & ~tm).sum() / nneg) if nneg else float("nan"),
            "accuracy": float((pm == tm).mean()),
            "positives": npos, "negatives": nneg}
    return out


def _spread(values):
    v = np.array([x for x in values if not np.isnan(x)])
    return float(v.max() - v.min()) if v.size else float("nan")


def demographic_parity_difference(y_true, y_pred, groups, pos_label=1, threshold=0.5) -> float:
    """Largest minus smallest selection rate P(pred positive | group) over the groups (0: parity).
    y_true is not used (it may be None); kept first for fairlearn's argument order."""
    p = _binary(y_pred, "y_pred", pos_label, threshold)
    if y_true is not None and len(np.asarray(y_true)) != len(p):
        raise ValueError(f"y_true and y_pred have different lengths ({len(np.asarray(y_true))} and {len(p)})")
    g = _groups(groups, len(p))
    return _spread([p[g == v].mean() for v in np.unique(g)])


def equalized_odds_difference(y_true, y_pred, groups, pos_label=1, threshold=0.5) -> float:
    """The larger of the spreads of the true positive rate and of the false positive rate over
    the groups (fairlearn's definition; 0: equalized odds). Groups without positives (or
    negatives) don't enter the rate they cannot measure."""
    r = group_rates(y_true, y_pred, groups, pos_label, threshold)
    return max(_spread([v["tpr"] for v in r.values()]), _spread([v["fpr"] for v in r.values()]))


class PerGroupReport(dict):
    """per_group's result: a dict, printed as one table (str(report) or report.table())."""

    def table(self) -> str:
        groups = self["groups"]
        fair = "demographic_parity_difference" in self
        cols = [("count", "{:>8d}", 8), ("accuracy", "{:>10.4f}", 10)]
        if fair:
            cols += [("selection_rate", "{:>10.4f}", 10), ("tpr", "{:>8.4f}", 8), ("fpr", "{:>8.4f}", 8)]
        names = [str(k) for k in groups]
        w = max(8, max(len(n) for n in names) + 2)
        head = {"selection_rate": "selected"}
        lines = [f"{'group':<{w}}" + "".join(f"{head.get(c, c):>{width}}" for c, _, width in cols)]
        for name, v in zip(names, groups.values()):
            lines.append(f"{name:<{w}}" + "".join(fmt.format(v[c]) for c, fmt, _ in cols))
        total = sum(v["count"] for v in groups.values())
        lines.append(f"{'overall':<{w}}{total:>8d}{self['overall']:>10.4f}")
        lines.append(f"accuracy gap {self['max_gap']:.4f} (best {self['best']}, worst {self['worst']})")
        if fair:
            lines.append(f"demographic parity difference {self['demographic_parity_difference']:.4f}, "
                         f"equalized odds difference {self['equalized_odds_difference']:.4f}")
        return "\n".join(lines)

    __str__ = table


def per_group(model, x, y, groups, batch_size=256, pos_label=None, threshold=0.5, verbose=False) -> dict:
    """Accuracy of `model` within each group of samples, and the largest gap between groups.

    groups: one label per sample (any hashable values: ints, strings). Returns
    {"groups": {g: {"accuracy", "count"}}, "overall": acc, "max_gap": best - worst,
     "best": g, "worst": g}, as a PerGroupReport (a dict whose str() is a table).

    For a binary classifier (one sigmoid output or two classes), or any classifier given
    pos_label (that class against the rest), each group also gets "selection_rate", "tpr",
    "fpr", "positives", "negatives", and the report "demographic_parity_difference" and
    "equalized_odds_difference". verbose=True prints the table."""
    n = len(x)
    g = _groups(groups, n)
    if len(y) != n:
        raise ValueError(f"x, y and groups need one entry per sample (got {n}, {len(y)}, {len(g)})")
    pred = model.predict(x, batch_size=batch_size, verbose=0)
    single = pred.shape[-1] == 1
    p = (pred.reshape(n, -1) > threshold).astype(np.int64).reshape(-1) if single else pred.argmax(-1).reshape(-1)
    t = _labels(y, "y")
    correct = p == t
    out = {}
    for v in np.unique(g):
        mask = g == v
        out[_key(v)] = {"accuracy": float(correct[mask].mean()), "count": int(mask.sum())}
    accs = {k: v["accuracy"] for k, v in out.items()}
    best, worst = max(accs, key=accs.get), min(accs, key=accs.get)
    rep = PerGroupReport(groups=out, overall=float(correct.mean()), max_gap=accs[best] - accs[worst],
                         best=best, worst=worst)
    if pos_label is not None or single or pred.shape[-1] == 2:
        pl = 1 if pos_label is None else pos_label
        rates = group_rates(t, p, g, pl)
        for k, v in rates.items():
            out[k].update({c: v[c] for c in ("selection_rate", "tpr", "fpr", "positives", "negatives")})
        rep["demographic_parity_difference"] = _spread([v["selection_rate"] for v in rates.values()])
        rep["equalized_odds_difference"] = max(_spread([v["tpr"] for v in rates.values()]),
                                               _spread([v["fpr"] for v in rates.values()]))
    if verbose:
        print(rep.table())
    return rep
