"""Losses with Keras names and semantics, computed by the C++ loss kernels.

A loss prepares its targets once per fit (`prepare_targets`), then per batch returns the mean loss
and writes d(loss)/d(prediction) into a buffer. Cross-entropies after a softmax (or sigmoid)
output are fused: the model hands over the logits and gets the gradient with respect to them,
p − y, which is exact and stable for logits of any size.
"""
from __future__ import annotations

import numpy as np

from kilnet.backend import kernels_for, xp_for
from kilnet.engine import precision
from kilnet.engine.tape import record
from kilnet.engine.tensor import Tensor
from kilnet.utils import as_numpy, lookup

__all__ = ["Loss", "MeanSquaredError", "MeanAbsoluteError", "BinaryCrossentropy",
           "CategoricalCrossentropy", "SparseCategoricalCrossentropy", "get", "serialize"]


def _out(out):
    return {} if out is None else {"out": out}


class Loss:
    name = "loss"
    sparse = False          # targets are integer class indices
    fuses_with = None       # output activation whose logits this loss can take directly

    def __init__(self, name=None, reduction="sum_over_batch_size", from_logits=False, **kwargs):
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unexpected argument(s) {', '.join(sorted(kwargs))}")
        if reduction not in ("sum_over_batch_size", "auto", None):
            raise ValueError(f"{type(self).__name__}: only reduction='sum_over_batch_size' is supported")
        self.from_logits = bool(from_logits)
        if name is not None:
            self.name = name

    # -- targets ----------------------------------------------------------------------------
    def prepare_targets(self, y, output_shape) -> np.ndarray:
        """Convert y once for the whole fit and check it against the model's output shape."""
        y = as_numpy(y, "y")
        if y.dtype.kind not in "fiub":
            raise TypeError(f"{self.name}: targets must be numeric, got dtype {y.dtype}")
        y = np.ascontiguousarray(y, dtype=np.float32)
        want = tuple(output_shape[1:])
        if y.shape[1:] != want:
            if y.ndim == 1 and want == (1,):
                y = y.reshape(-1, 1)
            else:
                raise ValueError(f"{self.name}: targets of shape {y.shape} do not match the model "
                                 f"output (batch, {', '.join(map(str, want))})")
        if not np.isfinite(y).all():
            raise ValueError(f"{self.name}: targets contain NaN or Inf")
        return y

    # -- per batch --------------------------------------------------------------------------
    def compute(self, y_pred, y_true, grad=None) -> float:
        """Mean loss of the batch; grad (optional) receives d(loss)/d(y_pred). On the GPU, `out`
        (a float32 CuPy array of shape (1,)) receives the loss on the device and None is
        returned, so the training step does not wait for the GPU."""
        raise NotImplementedError

    def compute_from_logits(self, logits, y_true, probs, grad) -> float:
        """Fused form (only where fuses_with is set): loss of activation(logits), probs receive
        activation(logits), grad the gradient with respect to the logits."""
        raise NotImplementedError

    def per_sample(self, y_pred, y_true, logits=False):
        """The loss of each sample (float64, shape (batch,)), whose mean is compute()'s value:
        what sample weights scale. logits: y_pred are the logits of the fused activation."""
        raise NotImplementedError

    def __call__(self, y_true, y_pred, sample_weight=None):
        """Keras's call order: loss(y_true, y_pred). On a Tensor (inside a GradientTape) the
        loss is a differentiable scalar Tensor; on arrays a float. sample_weight (batch,):
        sum(weight * per-sample loss) / batch, as Keras's 'sum_over_batch_size'."""
        if isinstance(y_pred, Tensor):
            yv = y_pred.value
            yt = y_true.value if isinstance(y_true, Tensor) else y_true
            if not isinstance(yt, np.ndarray) and hasattr(yt, "get"):
                yt = yt.get()
            target = self.prepare_targets(yt, (None,) + tuple(yv.shape[1:]))
            sw = check_sample_weight(sample_weight, yv.shape[0], self.name)
            if not isinstance(yv, np.ndarray):
                target = xp_for(yv).asarray(target)
                sw = None if sw is None else xp_for(yv).asarray(sw)
            return loss_op(self, y_pred, target, sample_weight=sw)[0]
        y_pred = np.ascontiguousarray(y_pred, dtype=np.float32)
        target = self.prepare_targets(y_true, (None,) + y_pred.shape[1:])
        sw = check_sample_weight(sample_weight, y_pred.shape[0], self.name)
        if sw is None:
            return float(self.compute(y_pred, target))
        return float(np.dot(self.per_sample(y_pred, target), sw) / y_pred.shape[0])

    def get_config(self):
        return {"name": self.name, "reduction": "sum_over_batch_size"}


class MeanSquaredError(Loss):
    name = "mean_squared_error"

    def compute(self, y_pred, y_true, grad=None, out=None):
        return kernels_for(y_pred).mse(y_pred, y_true, grad, **_out(out))

    def per_sample(self, y_pred, y_true, logits=False):
        xp = xp_for(y_pred)
        d = y_pred.astype(np.float64) - y_true
        return _rows_mean(xp, d * d)


class MeanAbsoluteError(Loss):
    name = "mean_absolute_error"

    def compute(self, y_pred, y_true, grad=None, out=None):
        return kernels_for(y_pred).mae(y_pred, y_true, grad, **_out(out))

    def per_sample(self, y_pred, y_true, logits=False):
        xp = xp_for(y_pred)
        return _rows_mean(xp, xp.abs(y_pred.astype(np.float64) - y_true))


class BinaryCrossentropy(Loss):
    name = "binary_crossentropy"
    fuses_with = "sigmoid"

    def prepare_targets(self, y, output_shape):
        y = super().prepare_targets(y, output_shape)
        if y.size and (y.min() < 0 or y.max() > 1):
            raise ValueError(f"{self.name}: targets must lie in [0, 1], got values in [{y.min()}, {y.max()}]")
        return y

    def compute(self, y_pred, y_true, grad=None, out=None):
        return kernels_for(y_pred).binary_crossentropy(y_pred, y_true, self.from_logits, grad, **_out(out))

    def per_sample(self, y_pred, y_true, logits=False):
        xp = xp_for(y_pred)
        x = y_pred.astype(np.float64)
        if logits or self.from_logits:
            v = xp.maximum(x, 0.0) - x * y_true + xp.log1p(xp.exp(-xp.abs(x)))
        else:
            pc = xp.clip(x, _EPS, _ONE_MINUS_EPS)
            v = -(y_true * xp.log(pc) + (1.0 - y_true) * xp.log(1.0 - pc))
        return _rows_mean(xp, v)

    def compute_from_logits(self, logits, y_true, probs, grad, out=None):
        loss = kernels_for(logits).binary_crossentropy(logits, y_true, True, grad, **_out(out))
        kernels_for(logits).activation_forward("sigmoid", logits, probs)
        return loss

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits}


class CategoricalCrossentropy(Loss):
    name = "categorical_crossentropy"
    fuses_with = "softmax"

    def compute(self, y_pred, y_true, grad=None, out=None):
        if self.from_logits:
            return kernels_for(y_pred).softmax_crossentropy(y_pred, target=y_true, grad=grad, **_out(out))
        return kernels_for(y_pred).categorical_crossentropy(y_pred, y_true, grad, **_out(out))

    def per_sample(self, y_pred, y_true, logits=False):
        xp = xp_for(y_pred)
        x = y_pred.astype(np.float64)
        if logits or self.from_logits:
            v = (y_true * (_logsumexp(xp, x) - x)).sum(axis=-1)
        else:
            q = xp.clip(x / x.sum(axis=-1, keepdims=True), _EPS, _ONE_MINUS_EPS)
            v = -(y_true * xp.log(q)).sum(axis=-1)
        return _rows_mean(xp, v)

    def compute_from_logits(self, logits, y_true, probs, grad, out=None):
        return kernels_for(logits).softmax_crossentropy(logits, target=y_true, probs=probs, grad=grad, **_out(out))

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits}


class SparseCategoricalCrossentropy(Loss):
    name = "sparse_categorical_crossentropy"
    sparse = True
    fuses_with = "softmax"

    def prepare_targets(self, y, output_shape):
        y = as_numpy(y, "y")
        if y.dtype.kind not in "fiub":
            raise TypeError(f"{self.name}: labels must be integers, got dtype {y.dtype}")
        lead = tuple(output_shape[1:-1])
        if y.ndim == len(lead) + 2 and y.shape[-1] == 1:   # (N, 1) labels, as Keras accepts
            y = y.reshape(y.shape[:-1])
        if y.shape[1:] != lead:
            raise ValueError(f"{self.name}: labels of shape {y.shape} do not match the model output "
                             f"{tuple(output_shape)}; expected (batch{''.join(', ' + str(d) for d in lead)})")
        if y.dtype.kind == "f":
            if not np.isfinite(y).all() or (y != np.round(y)).any():
                raise ValueError(f"{self.name}: labels must be whole numbers (class indices)")
        labels = np.ascontiguousarray(y, dtype=np.int64)
        n_classes = output_shape[-1]
        if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
            bad = labels[(labels < 0) | (labels >= n_classes)][0]
            raise ValueError(f"{self.name}: label {bad} is out of range for a model with "
                             f"{n_classes} output classes (valid: 0..{n_classes - 1})")
        return labels

    def compute(self, y_pred, y_true, grad=None, out=None):
        if self.from_logits:
            return kernels_for(y_pred).softmax_crossentropy(y_pred, labels=y_true, grad=grad, **_out(out))
        return kernels_for(y_pred).sparse_categorical_crossentropy(y_pred, y_true, grad, **_out(out))

    def per_sample(self, y_pred, y_true, logits=False):
        xp = xp_for(y_pred)
        x = y_pred.astype(np.float64)
        picked = xp.take_along_axis(x, xp.asarray(y_true)[..., None], axis=-1)[..., 0]
        if logits or self.from_logits:
            v = _logsumexp(xp, x)[..., 0] - picked
        else:
            v = -xp.log(xp.clip(picked / x.sum(axis=-1), _EPS, _ONE_MINUS_EPS))
        return _rows_mean(xp, v)

    def compute_from_logits(self, logits, y_true, probs, grad, out=None):
        return kernels_for(logits).softmax_crossentropy(logits, labels=y_true, probs=probs, grad=grad, **_out(out))

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits}


_EPS = float(np.float32(1e-7))
_ONE_MINUS_EPS = float(np.float32(1 - 1e-7))   # float32 Keras's bound (1 - 2**-23), as the kernels


def _rows_mean(xp, v):
    """Mean over every axis but the batch axis."""
    return v.reshape(v.shape[0], -1).mean(axis=1) if v.ndim > 1 else v


def _logsumexp(xp, x):
    m = x.max(axis=-1, keepdims=True)
    return m + xp.log(xp.exp(x - m).sum(axis=-1, keepdims=True))


def check_sample_weight(sample_weight, n, what):
    """sample_weight as a float32 (n,) array (None stays None); a clear error otherwise."""
    if sample_weight is None:
        return None
    if isinstance(sample_weight, Tensor):
        sample_weight = sample_weight.value
    if hasattr(sample_weight, "get") and not isinstance(sample_weight, (np.ndarray, dict)):
        sample_weight = sample_weight.get()
    sw = np.asarray(sample_weight)
    if sw.dtype.kind not in "fiub":
        raise TypeError(f"{what}: sample_weight must be numeric, got dtype {sw.dtype}")
    if sw.ndim == 2 and sw.shape[1] == 1:
        sw = sw[:, 0]
    if sw.ndim != 1 or sw.shape[0] != n:
        raise ValueError(f"{what}: sample_weight must have shape ({n},) (one weight per sample), "
                         f"got shape {sw.shape}")
    sw = sw.astype(np.float32)
    if not np.isfinite(sw).all() or (sw < 0).any():
        raise ValueError(f"{what}: sample_weight must be finite and non-negative")
    return sw


_ALIASES = {
    "mse": MeanSquaredError, "mean_squared_error": MeanSquaredError,
    "mae": MeanAbsoluteError, "mean_absolute_error": MeanAbsoluteError,
    "binary_crossentropy": BinaryCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
}
_CLASSES = {c.__name__: c for c in (MeanSquaredError, MeanAbsoluteError, BinaryCrossentropy,
                                    CategoricalCrossentropy, SparseCategoricalCrossentropy)}


def loss_op(loss, y_pred, y_true, probs=None, grad=None, out=None, sample_weight=None):
    """The mean loss of y_pred (a Tensor) against prepared targets, as a tape op. When y_pred is
    the softmax/sigmoid output the loss fuses with (its tensor remembers the logits), the loss
    is computed from the logits and its gradient goes straight to them: p - y, exact for any
    logits. probs/grad: reusable buffers (the trainer's); out: a (1,) GPU array that receives the
    loss on the device (the value is then that array, and the step never waits for the GPU).
    sample_weight: a checked (batch,) float32 array on y_pred's device: the loss becomes
    sum(w * per-sample loss) / batch and the gradient of each sample is scaled by its weight.
    Returns (loss Tensor, predictions for metrics)."""
    logits = y_pred._keras_logits
    fused = (logits is not None and not loss.from_logits and loss.fuses_with == logits[0])
    src = logits[1] if fused else y_pred
    sv = src.value
    xp = np if type(sv) is np.ndarray else xp_for(sv)
    if sv.dtype != np.float32:   # Keras computes losses in float32 (bfloat16/float16 outputs too)
        sv = precision.convert(sv, np.dtype(np.float32))
    if not sv.flags.c_contiguous:
        sv = xp.ascontiguousarray(sv, dtype=np.float32)
    if grad is None:
        grad = xp.empty(sv.shape, np.float32)
    if fused:
        if probs is None:
            probs = xp.empty(sv.shape, np.float32)
        val = loss.compute_from_logits(sv, y_true, probs, grad, out=out)
        pred = probs
    else:
        val = loss.compute(sv, y_true, grad, out=out)
        pred = sv
    if sample_weight is not None:
        # The kernels give the mean and its gradient; weights scale both per sample.
        w = sample_weight.reshape((-1,) + (1,) * (grad.ndim - 1))
        grad *= w
        weighted = (loss.per_sample(sv, y_true, logits=fused) @ sample_weight.astype(np.float64)) / sv.shape[0]
        if out is not None:
            out[...] = weighted
        else:
            val = float(weighted)
    value = out.reshape(()) if out is not None else np.array(val, np.float32)
    t = Tensor(value)
    dtype = src.value.dtype

    def bw(g, needs):
        if isinstance(g, np.ndarray) and g.size == 1 and float(g) == 1.0 and (dtype == np.float32 or
                                                                              precision.is_low(dtype)):
            return (grad,)
        with np.errstate(over="ignore"):   # a LossScaleOptimizer's scale may overflow: it skips that step
            return (precision.grad_as(grad * g, dtype),)
    record((src,), (t,), bw)
    return t, pred


def get(identifier) -> Loss:
    """A loss from an instance, a Keras string name ('mse', 'sparse_categorical_crossentropy',
    ...) or a serialized dict."""
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, str):
        return lookup("loss", _ALIASES, identifier)()
    if isinstance(identifier, dict):
        cls = lookup("loss class", _CLASSES, identifier.get("class_name"))
        cfg = {k: v for k, v in (identifier.get("config") or {}).items() if k in ("name", "reduction", "from_logits")}
        return cls(**cfg)
    raise TypeError(f"cannot interpret {identifier!r} as a loss; pass a kilnet.losses.Loss or a name")


def serialize(loss: Loss):
    return {"module": "keras.losses", "class_name": type(loss).__name__, "config": loss.get_config(),
            "registered_name": None}
