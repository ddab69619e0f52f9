"""Explaining a model's decisions with its own exact input gradients.

Every kilnet layer has a backward pass; running it with need_dw=False gives the gradient of an
output with respect to the input while leaving every parameter gradient untouched:

  saliency(model, x, target)              d f_target / d x
  smoothgrad(model, x, target, ...)       saliency averaged over noisy copies of x
  integrated_gradients(model, x, ...)     (x - x0) * mean of the gradient along the straight
                                          path from a baseline x0 to x (Gauss-Legendre nodes);
                                          the attributions sum to f(x) - f(x0) (completeness)
                                          up to the quadrature error

f is the model's output (for a softmax classifier: the probability of the target class).
Inputs are batched: x has shape (n, *input_shape) and so does every result.
"""
from __future__ import annotations

import numpy as np

from kilnet.backend import to_device, xp_of_device
from kilnet.engine.tape import GradientTape
from kilnet.engine.tensor import Tensor
from kilnet.utils import get_rng, to_float32

__all__ = ["input_gradient", "saliency", "smoothgrad", "integrated_gradients"]


def _targets(model, x, target, batch_size):
    """Per-sample target indices into the flattened output: given, or the predicted class."""
    out_units = int(np.prod(model.layers[-1].output_shape[1:]))
    if target is None:
        pred = model.predict(x, batch_size=batch_size, verbose=0).reshape(len(x), -1)
        return pred.argmax(axis=1)
    t = np.asarray(target)
    if t.dtype.kind not in "iu":
        raise TypeError(f"target must be integer class indices, got dtype {t.dtype}")
    t = np.broadcast_to(t, (len(x),)).astype(np.int64)
    if t.min() < 0 or t.max() >= out_units:
        raise ValueError(f"target {t[(t < 0) | (t >= out_units)][0]} is out of range for a model "
                         f"with {out_units} outputs")
    return t


def input_gradient(model, x, target, batch_size=256):
    """Gradient of output[target[i]] with respect to x[i], for every sample; and the outputs.

    Returns (grad with x's shape, f: the selected output values, shape (n,)). No parameter
    gradient is computed or changed."""
    if not model.built:
        raise ValueError("the model is not built; call fit/predict first or give input_shape=")
    x = to_float32(x, "x")
    if not np.isfinite(x).all():
        raise ValueError("input_gradient: x contains NaN or Inf")
    want = model.input_shape
    if want is not None and not isinstance(want, list) and tuple(x.shape[1:]) != tuple(want[1:]):
        raise ValueError(f"input_gradient: the model expects inputs of shape (batch, "
                         f"{', '.join(map(str, want[1:]))}), got {x.shape}")
    target = np.asarray(target, dtype=np.int64)
    grads = np.empty_like(x)
    values = np.empty(len(x), np.float64)
    dev = model.device
    xp = xp_of_device(dev)
    with model._guard("explain"):
        for i in range(0, len(x), batch_size):
            xb = Tensor(to_device(x[i:i + batch_size], dev))   # a GPU model gets each batch on the GPU
            tb = to_device(target[i:i + batch_size], dev)
            rows = xp.arange(len(xb))
            with GradientTape() as tape:
                tape.watch(xb)
                h = model(xb, training=False)
            flat = h.value.reshape(len(xb), -1)
            values[i:i + len(xb)] = to_device(flat[rows, tb], "cpu")
            g = xp.zeros_like(flat)
            g[rows, tb] = 1.0
            # Only the input's gradient: the walk leaves every weight gradient alone.
            (gx,) = tape.gradient(h, [xb], output_gradients=g.reshape(h.shape))
            grads[i:i + len(xb)] = to_device(gx.value, "cpu")
    return grads, values


def saliency(model, x, target=None, batch_size=256):
    """The gradient of the chosen output (default: the predicted class) with respect to x."""
    x = to_float32(x, "x")
    return input_gradient(model, x, _targets(model, x, target, batch_size), batch_size)[0]


def smoothgrad(model, x, target=None, n_samples=25, noise=0.15, seed=None, batch_size=256):
    """SmoothGrad (Smilkov et al. 2017): the saliency averaged over n_samples copies of x with
    Gaussian noise of standard deviation noise * (max(x) - min(x)) per sample."""
    x = to_float32(x, "x")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    t = _targets(model, x, target, batch_size)
    rng = np.random.default_rng(seed) if seed is not None else get_rng()
    span = (x.reshape(len(x), -1).max(1) - x.reshape(len(x), -1).min(1)).reshape((-1,) + (1,) * (x.ndim - 1))
    total = np.zeros(x.shape, np.float64)
    for _ in range(n_samples):
        noisy = (x + rng.normal(0.0, 1.0, x.shape) * noise * span).astype(np.float32)
        total += input_gradient(model, noisy, t, batch_size)[0]
    return (total / n_samples).astype(np.float32)


def _quadrature(method, steps):
    """Points in [0, 1] and weights summing to 1 for the path integral."""
    if method == "gausslegendre":      # exact for polynomials of degree 2*steps-1 (Captum's default)
        nodes, w = np.polynomial.legendre.leggauss(steps)
        return (nodes + 1) / 2, w / 2
    if method == "riemann_trapezoid":
        alphas = np.linspace(0.0, 1.0, steps)
        w = np.full(steps, 1.0 / (steps - 1)) if steps > 1 else np.ones(1)
        if steps > 1:
            w[[0, -1]] *= 0.5
        return alphas, w
    if method == "riemann_middle":
        return (np.arange(steps) + 0.5) / steps, np.full(steps, 1.0 / steps)
    raise ValueError(f"unknown method {method!r}; valid: gausslegendre, riemann_trapezoid, riemann_middle")


def integrated_gradients(model, x, baseline=None, target=None, steps=50, method="gausslegendre",
                         batch_size=256, return_delta=False):
    """Integrated gradients (Sundararajan et al. 2017) from `baseline` (default: zeros) to x.

    The path integral uses `steps` gradient evaluations placed by `method` (Gauss-Legendre by
    default, as Captum does; or riemann_trapezoid, riemann_middle). With return_delta=True also
    returns, per sample, sum(attributions) - (f(x) - f(baseline)): the completeness error,
    which shrinks as steps grows."""
    x = to_float32(x, "x")
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if baseline is None:
        baseline = np.zeros_like(x)
    baseline = np.broadcast_to(to_float32(baseline, "baseline"), x.shape)
    t = _targets(model, x, target, batch_size)
    alphas, weights = _quadrature(method, int(steps))
    diff = (x.astype(np.float64) - baseline)
    avg = np.zeros(x.shape, np.float64)
    # One batched input_gradient call per chunk of (sample, alpha) pairs keeps the batch large.
    per = max(1, batch_size // steps)
    for i in range(0, len(x), per):
        xs, bs, ts = x[i:i + per], baseline[i:i + per], t[i:i + per]
        path = (bs[None] + alphas.reshape((-1,) + (1,) * x.ndim) * (xs[None] - bs[None])).astype(np.float32)
        path = path.reshape((-1,) + x.shape[1:])
        g = input_gradient(model, path, np.tile(ts, len(alphas)), batch_size)[0]
        avg[i:i + per] = np.tensordot(weights, g.reshape((len(alphas), len(xs)) + x.shape[1:]), axes=(0, 0))
    attributions = (diff * avg).astype(np.float32)
    if not return_delta:
        return attributions
    f1 = input_gradient(model, x, t, batch_size)[1]
    f0 = input_gradient(model, np.ascontiguousarray(baseline), t, batch_size)[1]
    delta = attributions.reshape(len(x), -1).sum(1, dtype=np.float64) - (f1 - f0)
    return attributions, delta
