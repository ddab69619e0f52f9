"""Metrics with Keras names. Each keeps a running (sum, count) over an epoch.

'accuracy' is resolved the way Keras resolves it, from the loss: sparse categorical accuracy
after a sparse categorical cross-entropy, categorical accuracy after a categorical one, binary
accuracy after a binary one (or for a single output unit).
"""
from __future__ import annotations

import numpy as np

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

    def batch_values(self, y_pred, y_true) -> np.ndarray:
        """Per-sample values for one batch (targets already prepared by the loss)."""
        raise NotImplementedError

    def update(self, y_pred, y_true):
        v = self.batch_values(y_pred, y_true)
        self.total += float(v.sum())
        self.count += int(v.size)

    def update_state(self, y_true, y_pred):
        """Keras's call order."""
        self.update(np.asarray(y_pred, np.float32), np.asarray(y_true))

    def result(self) -> float:
        return self.total / self.count if self.count else 0.0


class SparseCategoricalAccuracy(Metric):
    name = "sparse_categorical_accuracy"

    def batch_values(self, y_pred, y_true):
        return np.argmax(y_pred, axis=-1) == np.asarray(y_true).reshape(y_pred.shape[:-1])


class CategoricalAccuracy(Metric):
    name = "categorical_accuracy"

    def batch_values(self, y_pred, y_true):
        return np.argmax(y_pred, axis=-1) == np.argmax(y_true, axis=-1)


class BinaryAccuracy(Metric):
    name = "binary_accuracy"

    def __init__(self, name=None, threshold=0.5):
        self.threshold = float(threshold)
        super().__init__(name)

    def batch_values(self, y_pred, y_true):
        return (y_pred > self.threshold) == (np.asarray(y_true) > self.threshold)


class Accuracy(Metric):
    """Exact equality of prediction and target (keras.metrics.Accuracy)."""
    name = "accuracy"

    def batch_values(self, y_pred, y_true):
        return np.asarray(y_pred) == np.asarray(y_true)


class MeanAbsoluteError(Metric):
    name = "mean_absolute_error"

    def batch_values(self, y_pred, y_true):
        return np.abs(y_pred - y_true)


class MeanSquaredError(Metric):
    name = "mean_squared_error"

    def batch_values(self, y_pred, y_true):
        return np.square(y_pred - y_true)


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
