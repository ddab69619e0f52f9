"""Explaining a model's decisions with its own exact input gradients.

Every kilnet layer has a backward pass; running it with need_dw=False gives the gradient of an
output with respect to the input while leaving every parameter gradient untouched:

  saliency(model, x, target)              d f_target / d x
  smoothgrad(model, x, target, ...)       saliency averaged over noisy copies of x
  integrated_gradients(model, x, ...)     (x - x0) * mean of the gradient along the straight
                                          path from a baseline x0 to x (Gauss-Legendre nodes);
                                          the attributions sum to f(x) - f(x0) (completeness)
                                          up to the quadrature error

and, model-agnostic (only model.predict is used):

  lime(model, x, mode="tabular"|"image")  LIME (Ribeiro et al. 2016): a weighted ridge regression
                                          fitted to the model's outputs on perturbed copies of one
                                          input (feature noise, or superpixels masked in and out)

f is the model's output (for a softmax classifier: the probability of the target class).
For the gradient methods, inputs are batched: x has shape (n, *input_shape) and so does every result.
"""
from __future__ import annotations

import numpy as np

from kilnet.backend import to_device, xp_of_device
from kilnet.engine.tape import GradientTape
from kilnet.engine.tensor import Tensor
from kilnet.utils import get_rng, to_float32

__all__ = ["input_gradient", "saliency", "smoothgrad", "integrated_gradients", "lime", "LimeExplanation",
           "slic", "weighted_ridge"]


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


# ------------------------------------------------------------------------ LIME
class LimeExplanation:
    """What kilnet.explain.lime returns.

    weights: one coefficient per feature (tabular: per standard deviation of the feature, as the
    lime package reports them) or per superpixel (image: the effect of keeping it visible);
    intercept; score: the weighted R^2 of the local surrogate on its samples; local_prediction:
    the surrogate at x; prediction: the model's output at x for the explained target;
    target: the explained output index; segments (image): the superpixel label of every pixel."""

    def __init__(self, mode, weights, intercept, score, local_prediction, prediction, target,
                 segments=None, feature_names=None):
        self.mode = mode
        self.weights = weights
        self.intercept = intercept
        self.score = score
        self.local_prediction = local_prediction
        self.prediction = prediction
        self.target = target
        self.segments = segments
        self.feature_names = feature_names

    def top(self, k=None, positive_only=False):
        """Indices of the k largest weights by magnitude (or the k most positive ones)."""
        order = np.argsort(-self.weights if positive_only else -np.abs(self.weights), kind="stable")
        if positive_only:
            order = order[self.weights[order] > 0]
        return order[:k]

    def as_list(self, k=None):
        names = self.feature_names or [str(i) for i in range(len(self.weights))]
        return [(names[i], float(self.weights[i])) for i in self.top(k)]

    def heatmap(self):
        """Image mode: every pixel gets its superpixel's weight (shape (H, W))."""
        if self.segments is None:
            raise ValueError("heatmap() is for image explanations")
        return self.weights[self.segments].astype(np.float32)

    def mask(self, k=5, positive_only=True):
        """Image mode: the pixels of the top-k superpixels, a boolean (H, W) array."""
        if self.segments is None:
            raise ValueError("mask() is for image explanations")
        return np.isin(self.segments, self.top(k, positive_only))

    def __repr__(self):
        return (f"LimeExplanation(mode={self.mode!r}, target={self.target}, "
                f"{len(self.weights)} weights, score={self.score:.3f})")


def _predict_fn(model, batch_size):
    """f(batch) -> 2-D float64 outputs, for a kilnet model, any object with predict, or a callable."""
    from kilnet.models.model import Model
    if isinstance(model, Model):
        fn = lambda a: model.predict(a, batch_size=batch_size, verbose=0)   # noqa: E731
    elif hasattr(model, "predict"):
        fn = model.predict
    elif callable(model):
        fn = model
    else:
        raise TypeError("model must be a kilnet model, an object with predict(), or a callable")

    def f(a):
        out = np.asarray(fn(a), np.float64)
        return out.reshape(len(a), -1)
    return f


def weighted_ridge(X, y, w, alpha=1.0):
    """Ridge regression with an unpenalised intercept and sample weights (what lime fits with
    scikit-learn's Ridge(alpha=1)). Returns (coef, intercept, weighted R^2)."""
    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.float64)
    w = np.asarray(w, np.float64)
    sw = w / w.sum()
    xm, ym = sw @ X, sw @ y
    Xc, yc = X - xm, y - ym
    A = (Xc * w[:, None]).T @ Xc + alpha * np.eye(X.shape[1])
    coef = np.linalg.solve(A, (Xc * w[:, None]).T @ yc)
    intercept = ym - xm @ coef
    resid = y - (X @ coef + intercept)
    tot = float(w @ (yc * yc))
    score = 1.0 - float(w @ (resid * resid)) / tot if tot > 0 else 0.0
    return coef, float(intercept), score


def _choose_target(pred_x, target):
    k = pred_x.shape[-1]
    if target is None:
        return int(pred_x.argmax()) if k > 1 else 0
    if not isinstance(target, (int, np.integer)) or isinstance(target, bool):
        raise TypeError(f"target must be an int output index, got {target!r}")
    if not 0 <= target < k:
        raise ValueError(f"target {target} is out of range for a model with {k} outputs")
    return int(target)


def slic(image, n_segments=50, compactness=0.2, max_iter=10, min_size_factor=0.25):
    """SLIC superpixels (Achanta et al. 2012) of an (H, W) or (H, W, C) image, in numpy.

    k-means on (intensity/colour, position) from a regular grid of about n_segments centres,
    each pixel compared only with the centres within 2 grid steps; distance^2 = colour^2 +
    (compactness * spatial / step)^2 with colours scaled to [0, 1] over the image. Afterwards
    every connected piece smaller than min_size_factor of the mean size joins a neighbour, so
    that each label is one connected region. Returns int labels 0..K-1 of shape (H, W)."""
    img = np.asarray(image, np.float64)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3:
        raise ValueError(f"slic needs an (H, W) or (H, W, C) image, got shape {np.shape(image)}")
    H, W, C = img.shape
    span = img.max() - img.min()
    img = (img - img.min()) / span if span > 0 else np.zeros_like(img)
    n_segments = max(1, int(n_segments))
    step = max(1.0, np.sqrt(H * W / n_segments))
    ys = np.arange(step / 2, H, step)
    xs = np.arange(step / 2, W, step)
    cy, cx = [a.ravel() for a in np.meshgrid(ys, xs, indexing="ij")]
    py, px = [a.ravel().astype(np.float64) for a in np.meshgrid(np.arange(H), np.arange(W), indexing="ij")]
    # start each centre at the lowest-gradient pixel of its 3x3 neighbourhood (less likely an edge)
    gy, gx = np.gradient(img.sum(-1))
    grad = gy * gy + gx * gx
    for i in range(len(cy)):
        y0, x0 = int(cy[i]), int(cx[i])
        y1, y2, x1, x2 = max(0, y0 - 1), min(H, y0 + 2), max(0, x0 - 1), min(W, x0 + 2)
        j = np.argmin(grad[y1:y2, x1:x2])
        cy[i], cx[i] = y1 + j // (x2 - x1), x1 + j % (x2 - x1)
    cc = img[cy.astype(int), cx.astype(int)]
    K = len(cy)
    pix = img.reshape(-1, C)
    labels = np.zeros((H, W), np.int64)
    m2 = (compactness / step) ** 2
    r = int(np.ceil(2 * step))
    for it in range(max_iter):
        # each centre competes for the pixels of its 2-step window only (the SLIC search region)
        best = np.full((H, W), np.inf)
        new = np.zeros((H, W), np.int64)
        for k in range(K):
            y0, x0 = int(round(cy[k])), int(round(cx[k]))
            y1, y2, x1, x2 = max(0, y0 - r), min(H, y0 + r + 1), max(0, x0 - r), min(W, x0 + r + 1)
            if y1 >= y2 or x1 >= x2:
                continue
            win = img[y1:y2, x1:x2]
            dy = (np.arange(y1, y2) - cy[k])[:, None]
            dx = (np.arange(x1, x2) - cx[k])[None, :]
            d = ((win - cc[k]) ** 2).sum(-1) + m2 * (dy * dy + dx * dx)
            b = best[y1:y2, x1:x2]
            closer = d < b
            b[closer] = d[closer]
            new[y1:y2, x1:x2][closer] = k
        if it > 0 and (new == labels).all():
            break
        labels = new
        flat = labels.ravel()
        cnt = np.bincount(flat, minlength=K).astype(np.float64)
        keep = cnt > 0
        c = np.maximum(cnt, 1)
        cy = np.where(keep, np.bincount(flat, py, K) / c, cy)
        cx = np.where(keep, np.bincount(flat, px, K) / c, cx)
        cc = np.stack([np.where(keep, np.bincount(flat, pix[:, j], K) / c, cc[:, j]) for j in range(C)], 1)
    return _connected_relabel(labels, max(1, int(min_size_factor * H * W / n_segments)))


def _connected_relabel(labels, min_size):
    """Split labels into 4-connected components and merge those below min_size into a neighbour."""
    H, W = labels.shape
    comp = -np.ones((H, W), np.int64)
    sizes, n = [], 0
    for y in range(H):
        for x in range(W):
            if comp[y, x] >= 0:
                continue
            lab, stack, size = labels[y, x], [(y, x)], 0
            comp[y, x] = n
            while stack:
                a, b = stack.pop()
                size += 1
                for u, v in ((a - 1, b), (a + 1, b), (a, b - 1), (a, b + 1)):
                    if 0 <= u < H and 0 <= v < W and comp[u, v] < 0 and labels[u, v] == lab:
                        comp[u, v] = n
                        stack.append((u, v))
            sizes.append(size)
            n += 1
    sizes = np.array(sizes)
    # merge small components into the first different component next to them (largest first)
    parent = np.arange(n)
    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i
    for c in np.argsort(sizes):
        if sizes[root(c)] >= min_size or n == 1:
            continue
        ys, xs = np.nonzero(comp == c)
        nb = set()
        for u, v in ((ys - 1, xs), (ys + 1, xs), (ys, xs - 1), (ys, xs + 1)):
            ok = (u >= 0) & (u < H) & (v >= 0) & (v < W)
            nb.update(root(int(k)) for k in comp[u[ok], v[ok]])
        nb.discard(root(c))
        if nb:
            tgt = max(nb, key=lambda k: sizes[k])
            r = root(c)
            parent[r] = tgt
            sizes[tgt] += sizes[r]
    roots = np.array([root(i) for i in range(n)])
    _, out = np.unique(roots[comp], return_inverse=True)
    return out.reshape(H, W)


def lime(model, x, num_samples=1000, mode="tabular", target=None, training_data=None,
         feature_mean=None, feature_std=None, categorical_features=None, kernel_width=None, alpha=1.0, num_features=None,
         feature_names=None, segments=None, n_segments=50, compactness=0.2, fill_value=0.0,
         segmenter="slic", seed=None, batch_size=256):
    """LIME (Ribeiro et al. 2016): explain the model's output for one input x by a weighted
    ridge regression fitted to the model's outputs on perturbed copies of x.

    mode="tabular": x is one row of d features. Samples are drawn from N(mean, std) per feature
    (mean/std of `training_data`, or given as feature_mean/feature_std; without either, around
    x with std 1), the first sample is x itself. Each sample's weight is
    sqrt(exp(-dist^2 / kernel_width^2)) with dist the Euclidean distance to x in standardised
    units and kernel_width 0.75 * sqrt(d) by default (the lime package's defaults, without its
    quartile discretisation). The surrogate is fitted on the standardised features, so a weight
    is the output change per standard deviation. categorical_features (column indices, with
    training_data): values drawn with their training frequencies, and the surrogate's feature is
    "equals x's category" (1/0), as in the lime package.

    mode="image": x is one (H, W) or (H, W, C) image. It is cut into superpixels (`segments`
    given, or SLIC of our own with about n_segments; segmenter="skimage" uses scikit-image's
    slic), each sample keeps a random subset of them and fills the rest with fill_value (a
    number, or "mean": each superpixel's mean colour, the lime package's default), the first
    sample keeps all. Weights: sqrt(exp(-d^2 / 0.25^2)) with d the cosine distance of the
    on/off vector to all-on (lime's); the surrogate's features are the on/off indicators.

    target: the output to explain (default: the predicted class; a single-output model's
    output). num_features: keep only the k features with the largest weights in a first fit
    and refit on them (the others get weight 0). Predictions are made in batches of
    batch_size through model.predict (or any callable of a batch). Returns a LimeExplanation."""
    if mode not in ("tabular", "image"):
        raise ValueError(f"mode must be 'tabular' or 'image', got {mode!r}")
    if not isinstance(num_samples, (int, np.integer)) or num_samples < 2:
        raise ValueError(f"num_samples must be an int >= 2, got {num_samples!r}")
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if kernel_width is not None and not kernel_width > 0:
        raise ValueError(f"kernel_width must be > 0, got {kernel_width}")
    if num_features is not None and (not isinstance(num_features, (int, np.integer)) or num_features < 1):
        raise ValueError(f"num_features must be a positive int, got {num_features!r}")
    rng = np.random.default_rng(seed) if seed is not None else get_rng()
    f = _predict_fn(model, batch_size)
    x = to_float32(x, "x")
    want = getattr(model, "input_shape", None)
    want = tuple(want[1:]) if isinstance(want, tuple) and len(want) >= 2 and None not in want[1:] else None
    if x.shape[:1] == (1,) and (x.ndim == (2 if mode == "tabular" else 4) or
                                (want is not None and x.shape[1:] == want)):   # a batch of one
        x = x[0]
    if not np.isfinite(x).all():
        raise ValueError("lime: x contains NaN or Inf")

    if mode == "tabular":
        if x.ndim != 1:
            raise ValueError(f"tabular lime explains one row of features; got x of shape {x.shape}")
        d = x.shape[0]
        if training_data is not None:
            td = to_float32(training_data, "training_data").reshape(len(training_data), -1)
            if td.shape[1] != d:
                raise ValueError(f"training_data has {td.shape[1]} features, x has {d}")
            mean, std = td.mean(0).astype(np.float64), td.std(0).astype(np.float64)
        else:
            mean = x.astype(np.float64) if feature_mean is None else np.broadcast_to(np.asarray(feature_mean, np.float64), (d,))
            std = np.ones(d) if feature_std is None else np.broadcast_to(np.asarray(feature_std, np.float64), (d,))
        if (std < 0).any() or not np.isfinite(std).all() or not np.isfinite(mean).all():
            raise ValueError("feature_std must be finite and >= 0, feature_mean finite")
        std = np.where(std == 0, 1.0, std)          # a constant feature: unit scale, as lime
        z = rng.normal(size=(num_samples, d))
        z[0] = (x - mean) / std
        samples = (z * std + mean).astype(np.float32)
        samples[0] = x
        cats = [] if categorical_features is None else sorted({int(c) for c in categorical_features})
        if cats and training_data is None:
            raise ValueError("categorical_features need training_data (their values are drawn "
                             "with the training frequencies)")
        for c in cats:
            if not 0 <= c < d:
                raise ValueError(f"categorical feature index {c} is out of range for {d} features")
            # lime's way: draw the category with its training frequency; the surrogate sees
            # 1 where it equals x's category, 0 elsewhere
            values, counts = np.unique(td[:, c], return_counts=True)
            col = rng.choice(values, size=num_samples, p=counts / counts.sum())
            col[0] = x[c]
            samples[:, c] = col
            z[:, c] = (col == x[c]).astype(np.float64)
        dist = np.sqrt(((z - z[0]) ** 2).sum(1))
        width = 0.75 * np.sqrt(d) if kernel_width is None else float(kernel_width)
        design, segs = z, None
        names = list(feature_names) if feature_names is not None else None
        if names is not None and len(names) != d:
            raise ValueError(f"feature_names has {len(names)} names for {d} features")
    else:
        if x.ndim not in (2, 3):
            raise ValueError(f"image lime explains one (H, W) or (H, W, C) image; got x of shape {x.shape}")
        if segments is not None:
            segs = np.asarray(segments)
            if segs.shape != x.shape[:2] or segs.dtype.kind not in "iu":
                raise ValueError(f"segments must be integer labels of shape {x.shape[:2]}, got "
                                 f"{segs.dtype} {segs.shape}")
            _, segs = np.unique(segs, return_inverse=True)
            segs = segs.reshape(x.shape[:2])
        elif segmenter == "skimage":
            from skimage.segmentation import slic as sk_slic
            segs = sk_slic(x.astype(np.float64), n_segments=n_segments, compactness=compactness,
                           channel_axis=-1 if x.ndim == 3 else None, start_label=0)
            segs = np.unique(segs, return_inverse=True)[1].reshape(x.shape[:2])
        elif segmenter == "slic":
            segs = slic(x, n_segments, compactness)
        else:
            raise ValueError(f"segmenter must be 'slic' or 'skimage', got {segmenter!r}")
        K = int(segs.max()) + 1
        img = x if x.ndim == 3 else x[..., None]
        if isinstance(fill_value, str):
            if fill_value != "mean":
                raise ValueError(f"fill_value must be a number or 'mean', got {fill_value!r}")
            cnt = np.bincount(segs.ravel(), minlength=K)[:, None]
            means = np.stack([np.bincount(segs.ravel(), img[..., c].ravel(), K) for c in range(img.shape[-1])], 1) / cnt
            fill = means[segs].astype(np.float32)
        else:
            fill = np.full_like(img, float(fill_value))
        design = rng.integers(0, 2, size=(num_samples, K)).astype(np.float64)
        design[0] = 1.0
        on = design.sum(1)
        dist = np.where(on > 0, 1.0 - np.sqrt(on / K), 1.0)     # cosine distance to all-on
        width = 0.25 if kernel_width is None else float(kernel_width)
        samples = None
        names = None

    # model outputs, in chunks (image samples are built per chunk to bound memory)
    outs = []
    chunk = max(1, int(batch_size))
    for i in range(0, num_samples, chunk):
        if mode == "tabular":
            xb = samples[i:i + chunk]
        else:
            keep = design[i:i + chunk][:, segs][..., None].astype(bool)      # (b, H, W, 1)
            xb = np.where(keep, img[None], fill[None]).reshape((-1,) + x.shape)
        if want is not None and xb.shape[1:] != want and int(np.prod(want)) == x.size:
            xb = xb.reshape((-1,) + want)           # e.g. an (H, W) image for an (H, W, 1) model
        outs.append(f(np.ascontiguousarray(xb, dtype=np.float32)))
    y_all = np.concatenate(outs)
    t = _choose_target(y_all[0], target)
    y = y_all[:, t]
    w = np.sqrt(np.exp(-(dist ** 2) / width ** 2))
    coef, intercept, score = weighted_ridge(design, y, w, alpha)
    if num_features is not None and num_features < design.shape[1]:
        used = np.argsort(-np.abs(coef), kind="stable")[:num_features]
        c2, intercept, score = weighted_ridge(design[:, used], y, w, alpha)
        coef = np.zeros_like(coef)
        coef[used] = c2
    local = float(design[0] @ coef + intercept)
    return LimeExplanation(mode, coef, intercept, score, local, float(y[0]), t, segs, names)
