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
           "BinaryAccuracy", "MeanAbsoluteError", "MeanSquaredError", "get"]


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


def per_group(model, x, y, groups, batch_size=256) -> dict:
    """Accuracy of `model` within each group of samples, and the largest gap between groups.

    groups: one label per sample (any hashable values: ints, strings). Returns
    {"groups": {g: {"accuracy", "count"}}, "overall": acc, "max_gap": best - worst,
     "best": g, "worst": g}."""
    groups = np.asarray(groups)
    if groups.ndim != 1:
        groups = groups.reshape(-1)
    if len(groups) != len(x) or len(y) != len(x):
        raise ValueError(f"x, y and groups need one entry per sample (got {len(x)}, {len(y)}, {len(groups)})")
    pred = model.predict(x, batch_size=batch_size, verbose=0)
    p = (pred.reshape(len(x), -1) > 0.5).astype(np.int64).reshape(-1) if pred.shape[-1] == 1 else pred.argmax(-1).reshape(-1)
    t = _labels(y, "y")
    correct = p == t
    out = {}
    for g in np.unique(groups):
        mask = groups == g
        key = g.item() if hasattr(g, "item") else g
        out[key] = {"accuracy": float(correct[mask].mean()), "count": int(mask.sum())}
    accs = {g: v["accuracy"] for g, v in out.items()}
    best, worst = max(accs, key=accs.get), min(accs, key=accs.get)
    return {"groups": out, "overall": float(correct.mean()), "max_gap": accs[best] - accs[worst],
            "best": best, "worst": worst}
