"""Loss kernels (Keras semantics): mse, mae, binary CE (probabilities and logits), categorical CE
(renormalized probabilities), sparse categorical CE, fused softmax + cross-entropy.

Keras: the loss is the mean over the last axis per sample, then the mean over samples; the
probability forms clip to [1e-7, 1 - 1e-7] in float32 (so the upper bound is
float32(1 - 1e-7) = 1 - 2**-23) and the clipped entries get zero gradient; categorical CE
divides each row by its sum first. Every grad is d(loss)/d(input), already divided by rows."""
import numpy as np
import pytest

from conftest import views_at, assert_grad_close, numeric_grad, rand, avx2_and_avx512
from kilnet import _cpu

MODULES = [pytest.param(_cpu, id="fast"), pytest.param(_cpu.ref, id="ref")]
# Sizes 1, 3, 7, 17, 33, 1000, 100003 in rows and in cols; the big ones run the OpenMP paths.
SHAPES = [(1, 1), (1, 3), (3, 7), (7, 17), (17, 33), (33, 1), (2, 3, 5), (1000, 7), (3, 1000),
          (1, 100003), (100003, 3)]

F32_EPS = float(np.float32(1e-7))
F32_HI = float(np.float32(1.0) - np.float32(1e-7))   # 1 - 2**-23: what float32 Keras clips to


@pytest.fixture
def threads4():
    old = _cpu.get_num_threads()
    _cpu.set_num_threads(4)
    yield
    _cpu.set_num_threads(old)


# ----------------------------------------------------------------------------- numpy formulas
# Each returns (loss, grad) in float64 for float32 inputs.
def f64(a):
    return np.asarray(a, dtype=np.float64)


def np_mse(p, t):
    d = f64(p) - f64(t)
    return (d * d).mean(axis=-1).mean(), 2.0 * d / d.size


def np_mae(p, t):
    d = f64(p) - f64(t)
    return np.abs(d).mean(axis=-1).mean(), np.sign(d) / d.size


def np_bce(p, t, from_logits):
    p, t = f64(p), f64(t)
    if from_logits:
        el = np.maximum(p, 0) - p * t + np.log1p(np.exp(-np.abs(p)))
        e = np.exp(-np.abs(p))
        sig = np.where(p >= 0, 1 / (1 + e), e / (1 + e))   # exact in the tails too
        grad = (sig - t) / p.size
    else:
        pc = np.clip(p, F32_EPS, F32_HI)
        el = -(t * np.log(pc) + (1 - t) * np.log(1 - pc))
        with np.errstate(divide="ignore", invalid="ignore"):
            grad = np.where(pc == p, (p - t) / (p * (1 - p)), 0.0) / p.size
    return el.mean(axis=-1).mean(), grad


def np_cce(p, t):
    shape = p.shape
    p, t = f64(p).reshape(-1, shape[-1]), f64(t).reshape(-1, shape[-1])
    rows = p.shape[0]
    s = p.sum(axis=1, keepdims=True)
    q = p / s
    qc = np.clip(q, F32_EPS, F32_HI)
    loss = -(t * np.log(qc)).sum(axis=1).mean()
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.where((q == qc) & (t != 0), -t / q, 0.0)    # d/dq, zero where clipped
    grad = (g - (g * q).sum(axis=1, keepdims=True)) / s / rows  # through q = p / sum(p)
    return loss, grad.reshape(shape)


def onehot(labels, cols):
    lab = np.asarray(labels).reshape(-1)
    t = np.zeros((lab.size, cols))
    t[np.arange(lab.size), lab] = 1.0
    return t


def np_scce(p, labels):
    return np_cce(p, onehot(labels, p.shape[-1]).reshape(p.shape))


def np_smce(x, labels=None, target=None):
    """-> loss, probs, grad."""
    shape = x.shape
    x = f64(x).reshape(-1, shape[-1])
    rows = x.shape[0]
    t = onehot(labels, shape[-1]) if labels is not None else f64(target).reshape(x.shape)
    mx = x.max(axis=1, keepdims=True)
    lse = mx + np.log(np.exp(x - mx).sum(axis=1, keepdims=True))
    logp = x - lse
    probs = np.exp(logp)
    loss = -(t * logp).sum(axis=1).mean()
    grad = (probs * t.sum(axis=1, keepdims=True) - t) / rows
    return loss, probs.reshape(shape), grad.reshape(shape)


# -------------------------------------------------------------------------- kernel callers
def run(K, name, p, t, **kw):
    """(loss, grad) from a kernel; grad computed into a fresh buffer."""
    g = np.full(p.shape, np.nan, np.float32)
    if name == "bce":
        loss = K.binary_crossentropy(p, t, kw.get("from_logits", False), g)
    elif name == "bce_logits":
        loss = K.binary_crossentropy(p, t, from_logits=True, grad=g)
    elif name == "scce":
        loss = K.sparse_categorical_crossentropy(p, t, g)
    elif name == "smce":
        loss = K.softmax_crossentropy(p, labels=t, grad=g)
    elif name == "smce_dense":
        loss = K.softmax_crossentropy(p, target=t, grad=g)
    else:
        loss = getattr(K, name)(p, t, g)
    assert isinstance(loss, float)
    return loss, g


def np_loss(name, p, t):
    if name == "mse":
        return np_mse(p, t)
    if name == "mae":
        return np_mae(p, t)
    if name == "bce":
        return np_bce(p, t, False)
    if name == "bce_logits":
        return np_bce(p, t, True)
    if name == "categorical_crossentropy":
        return np_cce(p, t)
    if name == "scce":
        return np_scce(p, t)
    if name == "smce":
        loss, _, g = np_smce(p, labels=t)
        return loss, g
    if name == "smce_dense":
        loss, _, g = np_smce(p, target=t)
        return loss, g
    raise AssertionError(name)


def make_inputs(rng, name, shape):
    """Random (pred, target) for a loss, kept away from the clip bounds and the kinks."""
    cols = shape[-1]
    if name in ("mse", "mae"):
        return rand(rng, *shape, lo=-2, hi=2), rand(rng, *shape, lo=-2, hi=2)
    if name == "bce":
        return rand(rng, *shape, lo=0.02, hi=0.98), rng.integers(0, 2, shape).astype(np.float32)
    if name == "bce_logits":
        return rand(rng, *shape, lo=-6, hi=6), rand(rng, *shape, lo=0, hi=1)
    if name == "categorical_crossentropy":   # unnormalized probabilities, soft targets
        t = rng.dirichlet(np.ones(cols), size=int(np.prod(shape[:-1]))).astype(np.float32)
        return rand(rng, *shape, lo=0.05, hi=1.0), t.reshape(shape)
    if name == "scce":
        return rand(rng, *shape, lo=0.05, hi=1.0), rng.integers(0, cols, shape[:-1]).astype(np.int64)
    if name == "smce":
        return rand(rng, *shape, lo=-8, hi=8), rng.integers(0, cols, shape[:-1]).astype(np.int64)
    if name == "smce_dense":
        t = rng.dirichlet(np.ones(cols), size=int(np.prod(shape[:-1]))).astype(np.float32)
        return rand(rng, *shape, lo=-8, hi=8), t.reshape(shape)
    raise AssertionError(name)


LOSSES = ["mse", "mae", "bce", "bce_logits", "categorical_crossentropy", "scce", "smce",
          "smce_dense"]


def grad_close(g, expect, rtol=1e-5, atol_rel=1e-6):
    expect = f64(expect)
    scale = float(np.abs(expect).max(initial=0.0))
    np.testing.assert_allclose(f64(g), expect, rtol=rtol, atol=atol_rel * scale + 1e-30)


# ------------------------------------------------------- 1. fast == ref == numpy, many shapes
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", LOSSES)
def test_loss_matches_ref_and_numpy(rng, threads4, name, shape):
    p, t = make_inputs(rng, name, shape)
    loss, g = run(_cpu, name, p, t)
    loss_ref, g_ref = run(_cpu.ref, name, p, t)
    loss_np, g_np = np_loss(name, p, t)
    assert np.isfinite(loss) and np.all(np.isfinite(g))
    np.testing.assert_allclose(loss, loss_np, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(loss_ref, loss_np, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(loss, loss_ref, rtol=2e-6, atol=1e-7)
    grad_close(g, g_np)
    grad_close(g_ref, g_np)
    grad_close(g, g_ref)


@pytest.mark.parametrize("K", MODULES)
def test_loss_without_grad_and_probs_output(rng, K):
    p, t = make_inputs(rng, "mse", (4, 6))
    assert K.mse(p, t) == K.mse(p, t, None) == run(K, "mse", p, t)[0]
    assert K.binary_crossentropy(np.clip(p, 0.1, 0.9), np.abs(t) / 2) == \
        run(K, "bce", np.clip(p, 0.1, 0.9), np.abs(t) / 2)[0]
    x, lab = make_inputs(rng, "smce", (5, 9))
    probs = np.empty_like(x)
    loss = K.softmax_crossentropy(x, labels=lab, probs=probs)
    loss_np, probs_np, _ = np_smce(x, labels=lab)
    np.testing.assert_allclose(loss, loss_np, rtol=2e-6)
    np.testing.assert_allclose(probs, probs_np, rtol=1e-5, atol=1e-7)
    # labels of shape (rows, 1) are accepted as Keras does
    assert K.softmax_crossentropy(x, labels=lab[:, None]) == loss
    assert K.sparse_categorical_crossentropy(probs, lab[:, None]) == \
        K.sparse_categorical_crossentropy(probs, lab)


def test_softmax_crossentropy_dense_target_not_summing_to_one(rng):
    # grad = softmax * sum(t) - t in general (Keras from_logits with soft targets).
    x = rand(rng, 6, 11, lo=-5, hi=5)
    t = rand(rng, 6, 11, lo=0, hi=1)
    for K in (_cpu, _cpu.ref):
        loss, g = run(K, "smce_dense", x, t)
        loss_np, g_np = np_loss("smce_dense", x, t)
        np.testing.assert_allclose(loss, loss_np, rtol=2e-6)
        grad_close(g, g_np)


def test_sparse_and_fused_agree_with_dense_onehot(rng):
    x, lab = make_inputs(rng, "smce", (33, 17))
    t = onehot(lab, 17).astype(np.float32)
    a = run(_cpu, "smce", x, lab)
    b = run(_cpu, "smce_dense", x, t)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-6, atol=1e-9)
    p = rand(rng, 33, 17, lo=0.05, hi=1)
    c = run(_cpu, "scce", p, lab)
    d = run(_cpu, "categorical_crossentropy", p, t)
    np.testing.assert_allclose(c[0], d[0], rtol=1e-6)
    np.testing.assert_allclose(c[1], d[1], rtol=1e-6, atol=1e-9)


# --------------------------------------------------------- 2. gradients vs finite differences
FD_CASES = {
    "mse": lambda rng: (rand(rng, 3, 5, lo=-2, hi=2), rand(rng, 3, 5, lo=-2, hi=2)),
    # mae away from the kink: |p - t| >= 0.1 >> the FD step
    "mae": lambda rng: (lambda t, d: (t + d, t))(
        rand(rng, 3, 5), (rand(rng, 3, 5, lo=0.1, hi=1) * rng.choice([-1, 1], (3, 5))).astype(np.float32)),
    "bce": lambda rng: (rand(rng, 3, 5, lo=0.05, hi=0.95), rng.integers(0, 2, (3, 5)).astype(np.float32)),
    "bce_soft": lambda rng: (rand(rng, 3, 5, lo=0.05, hi=0.95), rand(rng, 3, 5, lo=0, hi=1)),
    "bce_logits": lambda rng: (rand(rng, 3, 5, lo=-4, hi=4), rand(rng, 3, 5, lo=0, hi=1)),
    "categorical_crossentropy": lambda rng: (rand(rng, 3, 5, lo=0.1, hi=1),
                                             onehot(rng.integers(0, 5, 3), 5).astype(np.float32)),
    "cce_soft": lambda rng: (rand(rng, 3, 5, lo=0.1, hi=1),
                             rng.dirichlet(np.ones(5), 3).astype(np.float32)),
    "scce": lambda rng: (rand(rng, 2, 2, 5, lo=0.1, hi=1), rng.integers(0, 5, (2, 2))),
    "smce": lambda rng: (rand(rng, 4, 5, lo=-3, hi=3), rng.integers(0, 5, 4)),
    "smce_dense": lambda rng: (rand(rng, 4, 5, lo=-3, hi=3),
                               rng.dirichlet(np.ones(5), 4).astype(np.float32)),
    "smce_dense_unnormalized": lambda rng: (rand(rng, 4, 5, lo=-3, hi=3), rand(rng, 4, 5, lo=0, hi=1)),
}
FD_KERNEL = {"bce_soft": "bce", "cce_soft": "categorical_crossentropy",
             "smce_dense_unnormalized": "smce_dense"}


@pytest.mark.parametrize("K", MODULES)
@pytest.mark.parametrize("case", list(FD_CASES))
def test_loss_gradient_finite_differences(rng, K, case):
    p, t = FD_CASES[case](rng)
    p = np.ascontiguousarray(p, dtype=np.float32)
    if t.dtype.kind == "i":
        t = t.astype(np.int64)
    name = FD_KERNEL.get(case, case)
    f = lambda: run(K, name, p, t)[0]          # the kernel's float64 loss
    num = numeric_grad(f, p, eps=1e-3)
    _, g = run(K, name, p, t)
    assert_grad_close(g, num, rtol=1e-2, atol=1e-3)


# ------------------------------------------------------------------------- 3. PyTorch parity
@pytest.fixture
def torch():
    return pytest.importorskip("torch", exc_type=ImportError)


def tgrad(torch, fn, *arrays):
    """loss value and d loss / d arrays[0] from torch autograd (float32)."""
    x = torch.from_numpy(arrays[0].copy()).requires_grad_(True)
    out = fn(x, *[torch.from_numpy(np.asarray(a)) for a in arrays[1:]])
    out.backward()
    return float(out.detach()), x.grad.numpy()


@pytest.mark.parametrize("shape", [(17, 33), (2, 3, 5), (1000, 7)], ids=str)
def test_mse_torch(rng, torch, shape):
    p, t = make_inputs(rng, "mse", shape)
    lt, gt = tgrad(torch, torch.nn.functional.mse_loss, p, t)
    loss, g = run(_cpu, "mse", p, t)
    np.testing.assert_allclose(loss, lt, rtol=1e-5)
    np.testing.assert_allclose(g, gt, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("shape", [(17, 33), (2, 3, 5)], ids=str)
def test_bce_probabilities_torch(rng, torch, shape):
    p = rand(rng, *shape, lo=0.01, hi=0.99)
    t = rng.integers(0, 2, shape).astype(np.float32)
    t.reshape(-1)[::3] = rand(rng, t.size, lo=0.25, hi=0.75)[::3]   # some soft targets
    lt, gt = tgrad(torch, torch.nn.functional.binary_cross_entropy, p, t)
    loss, g = run(_cpu, "bce", p, t)
    np.testing.assert_allclose(loss, lt, rtol=1e-5)
    np.testing.assert_allclose(g, gt, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("shape", [(17, 33), (2, 3, 5)], ids=str)
def test_bce_logits_torch(rng, torch, shape):
    x = rand(rng, *shape, lo=-30, hi=30)
    t = rand(rng, *shape, lo=0, hi=1)
    lt, gt = tgrad(torch, torch.nn.functional.binary_cross_entropy_with_logits, x, t)
    loss, g = run(_cpu, "bce_logits", x, t)
    np.testing.assert_allclose(loss, lt, rtol=1e-5)
    np.testing.assert_allclose(g, gt, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("rows,cols", [(17, 33), (64, 10), (3, 1000)])
def test_softmax_crossentropy_torch(rng, torch, rows, cols):
    F = torch.nn.functional
    x, lab = make_inputs(rng, "smce", (rows, cols))
    lt, gt = tgrad(torch, F.cross_entropy, x, lab)
    probs = np.empty_like(x)
    g = np.empty_like(x)
    loss = _cpu.softmax_crossentropy(x, labels=lab, probs=probs, grad=g)
    np.testing.assert_allclose(loss, lt, rtol=1e-5)
    np.testing.assert_allclose(g, gt, rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(x), -1).numpy(), rtol=1e-5, atol=1e-8)
    # dense (probability) targets: torch.cross_entropy accepts class probabilities too
    _, t = make_inputs(rng, "smce_dense", (rows, cols))
    lt, gt = tgrad(torch, F.cross_entropy, x, t)
    loss, g = run(_cpu, "smce_dense", x, t)
    np.testing.assert_allclose(loss, lt, rtol=1e-5)
    np.testing.assert_allclose(g, gt, rtol=1e-4, atol=1e-8)


def test_categorical_crossentropy_torch(rng, torch):
    rows, cols = 17, 33
    p = rand(rng, rows, cols, lo=0.05, hi=1)
    t = rng.dirichlet(np.ones(cols), rows).astype(np.float32)
    # Value on normalized probabilities: -sum(t log p) / N.
    pn = (p / p.sum(axis=1, keepdims=True)).astype(np.float32)
    lt = float(-(torch.from_numpy(t) * torch.log(torch.from_numpy(pn))).sum() / rows)
    np.testing.assert_allclose(_cpu.categorical_crossentropy(pn, t), lt, rtol=1e-5)
    # Gradient on unnormalized p: Keras renormalizes each row, so autograd through p / sum(p).
    fn = lambda x, tt: -(tt * torch.log(x / x.sum(-1, keepdim=True))).sum() / rows
    lt, gt = tgrad(torch, fn, p, t)
    loss, g = run(_cpu, "categorical_crossentropy", p, t)
    np.testing.assert_allclose(loss, lt, rtol=1e-5)
    np.testing.assert_allclose(g, gt, rtol=1e-4, atol=1e-7)


def test_sparse_categorical_crossentropy_torch(rng, torch):
    F = torch.nn.functional
    rows, cols = 33, 17
    p = rand(rng, rows, cols, lo=0.05, hi=1)
    lab = rng.integers(0, cols, rows)
    pn = (p / p.sum(axis=1, keepdims=True)).astype(np.float32)
    lt = float(F.nll_loss(torch.log(torch.from_numpy(pn)), torch.from_numpy(lab)))
    np.testing.assert_allclose(_cpu.sparse_categorical_crossentropy(pn, lab), lt, rtol=1e-5)
    fn = lambda x, ll: F.nll_loss(torch.log(x / x.sum(-1, keepdim=True)), ll)
    lt, gt = tgrad(torch, fn, p, lab)
    loss, g = run(_cpu, "scce", p, lab)
    np.testing.assert_allclose(loss, lt, rtol=1e-5)
    np.testing.assert_allclose(g, gt, rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------- 4. numerical stability
BIG_LOGITS = np.array([[1e4, -1e4, 0.0],
                       [-1e4, 1e4, 1e4],
                       [88.0, 89.0, -89.0],
                       [-89.0, -88.0, 89.0],
                       [89.0, 89.0, 89.0],
                       [-1e4, -1e4, -1e4]], dtype=np.float32)


@pytest.mark.parametrize("K", MODULES)
@pytest.mark.parametrize("labels", [[0, 0, 0, 0, 2, 1], [1, 1, 2, 1, 0, 2]])
def test_softmax_crossentropy_huge_logits(K, labels):
    lab = np.array(labels, np.int64)
    for dense in (False, True):
        probs = np.empty_like(BIG_LOGITS)
        g = np.empty_like(BIG_LOGITS)
        if dense:
            t = onehot(lab, 3).astype(np.float32)
            loss = K.softmax_crossentropy(BIG_LOGITS, target=t, probs=probs, grad=g)
        else:
            loss = K.softmax_crossentropy(BIG_LOGITS, labels=lab, probs=probs, grad=g)
        loss_np, probs_np, g_np = np_smce(BIG_LOGITS, labels=lab)   # exact float64 limits
        assert np.isfinite(loss) and np.all(np.isfinite(g)) and np.all(np.isfinite(probs))
        np.testing.assert_allclose(loss, loss_np, rtol=1e-6)
        np.testing.assert_allclose(probs, probs_np, rtol=1e-6, atol=1e-30)
        np.testing.assert_allclose(g, g_np, rtol=1e-6, atol=1e-12)
    # e.g. the first row labelled 1: loss 2e4, grad (1, -1, 0)/rows
    if labels[0] == 1:
        np.testing.assert_allclose(g[0], np.array([1, -1, 0]) / 6, rtol=1e-6)


@pytest.mark.parametrize("K", MODULES)
def test_softmax_crossentropy_huge_logits_per_row(K):
    """Each row alone, so a small loss is not hidden by a 2e4 one in the mean: the loss of a
    row whose label sits at the max is log(sum exp(x - max)) (e.g. log 2 for [-1e4, 1e4, 1e4]),
    which must not be computed as float(max + log(sum)) - x (ulp(1e4) = 1e-3)."""
    rows = np.concatenate([BIG_LOGITS, np.array([[3e38, -3e38, 0.0]], np.float32)])
    for row in rows:   # the last: loss 6e38 for label 1, beyond float32 but fine as a double
        x = row[None, :].copy()
        for label in range(3):
            lab = np.array([label], np.int64)
            loss_np, _, g_np = np_smce(x, labels=lab)
            loss, g = run(K, "smce", x, lab)
            np.testing.assert_allclose(loss, loss_np, rtol=1e-6, err_msg=f"{row} label {label}")
            np.testing.assert_allclose(g, g_np, rtol=1e-6, atol=1e-12)
            t = onehot(lab, 3).astype(np.float32)
            loss, g = run(K, "smce_dense", x, t)
            np.testing.assert_allclose(loss, loss_np, rtol=1e-6, err_msg=f"{row} label {label}")
            np.testing.assert_allclose(g, g_np, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("K", MODULES)
def test_confident_predictions_keep_relative_precision(rng, K):
    """A well-trained model: the right class wins by a margin of 8..12, the loss per element is
    ~1e-5 and must still be right to float32 relative precision (torch computes it that way)."""
    rows, cols = 64, 10
    lab = rng.integers(0, cols, rows)
    x = rand(rng, rows, cols, lo=-2, hi=2)
    x[np.arange(rows), lab] += rand(rng, rows, lo=8, hi=12) + 2
    loss_np, _, g_np = np_smce(x, labels=lab)
    loss, g = run(K, "smce", x, lab)
    np.testing.assert_allclose(loss, loss_np, rtol=1e-5)
    # The grad at the label is (p - 1)/rows with p = 1 - 1e-5: float32 p carries ulp(1) = 1.2e-7
    # (torch's softmax - onehot as well), so that is the absolute floor, not a relative one.
    np.testing.assert_allclose(g, g_np, rtol=1e-5, atol=1.2e-7 / rows)
    loss, g = run(K, "smce_dense", x, onehot(lab, cols).astype(np.float32))
    np.testing.assert_allclose(loss, loss_np, rtol=1e-5)
    np.testing.assert_allclose(g, g_np, rtol=1e-5, atol=1.2e-7 / rows)
    # binary: logits of magnitude 8..12 on the right side of their 0/1 targets
    t = rng.integers(0, 2, (rows, cols)).astype(np.float32)
    z = (rand(rng, rows, cols, lo=8, hi=12) * np.where(t == 1, 1, -1)).astype(np.float32)
    loss_np, g_np = np_bce(z, t, True)
    loss, g = run(K, "bce_logits", z, t)
    np.testing.assert_allclose(loss, loss_np, rtol=1e-5)
    np.testing.assert_allclose(g, g_np, rtol=1e-5, atol=1.2e-7 / z.size)  # sigmoid(x) - 1: ulp(1)
    # one element at a time: softplus(x) - t*x must not be formed as float(x + tiny) - x
    for x0 in [4.0, 8.0, 10.0, 15.0, 20.0, 50.0]:
        for z1, t1 in [(x0, 1.0), (-x0, 0.0)]:
            z1 = np.array([[z1]], np.float32)
            t1 = np.array([[t1]], np.float32)
            loss_np, g_np = np_bce(z1, t1, True)
            loss, g = run(K, "bce_logits", z1, t1)
            np.testing.assert_allclose(loss, loss_np, rtol=1e-5, err_msg=f"x={z1} t={t1}")
            np.testing.assert_allclose(g, g_np, rtol=1e-5, atol=1.2e-7)


@pytest.mark.parametrize("K", MODULES)
def test_bce_logits_huge(K):
    x = np.array([[1e4, -1e4, 88, -88, 89, -89, 0, 3e38, -3e38]] * 2, dtype=np.float32)
    t = np.zeros_like(x)
    t[1] = 1.0
    loss, g = run(K, "bce_logits", x, t)
    with np.errstate(over="ignore"):
        loss_np, g_np = np_bce(x, t, True)
    assert np.isfinite(loss) and np.all(np.isfinite(g))
    np.testing.assert_allclose(loss, loss_np, rtol=1e-6)
    np.testing.assert_allclose(g, g_np, rtol=1e-6, atol=1e-12)
    n = x.size
    # analytic limits: sigmoid(+big) - 0 = 1, sigmoid(-big) - 1 = -1, the others exactly 0
    assert g[0, 0] == pytest.approx(1 / n) and g[0, 1] == 0.0
    assert g[1, 0] == 0.0 and g[1, 1] == pytest.approx(-1 / n)


@pytest.mark.parametrize("K", MODULES)
def test_bce_probabilities_exact_0_and_1(K):
    p = np.array([[0.0, 1.0, 0.0, 1.0, 0.5, F32_EPS, F32_HI]], dtype=np.float32)
    t = np.array([[1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0]], dtype=np.float32)
    loss, g = run(K, "bce", p, t)
    assert np.isfinite(loss) and np.all(np.isfinite(g))
    loss_np, g_np = np_bce(p, t, False)
    # Worst terms: -log(1e-7) = 16.12 (p=0, t=1) and -log(1 - float32(1-1e-7)) = 15.94 (p=1, t=0).
    np.testing.assert_allclose(loss, loss_np, rtol=1e-6)
    np.testing.assert_allclose(loss, (-np.log(F32_EPS) - np.log(1 - F32_HI) - 2 * np.log(F32_HI)
                                      - np.log(0.5) - np.log(1 - F32_EPS) - np.log(F32_HI)) / 7,
                               rtol=1e-6)
    assert np.all(g[0, :4] == 0.0)               # clipped entries: zero gradient
    np.testing.assert_allclose(g[0, 4], -2.0 / 7, rtol=1e-6)
    grad_close(g, g_np)


@pytest.mark.parametrize("K", MODULES)
def test_categorical_probabilities_exact_0_and_1(K):
    p = np.array([[0.0, 1.0, 0.0],     # target prob 0: clipped to 1e-7, loss 16.1, grad 0
                  [0.0, 0.0, 1.0],     # target prob 1: clipped to 1 - 2**-23, grad 0
                  [0.5, 0.5, 0.0]], dtype=np.float32)  # a zero off-target: unclipped target
    t = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 0]], dtype=np.float32)
    loss, g = run(K, "categorical_crossentropy", p, t)
    loss_np, g_np = np_cce(p, t)
    assert np.isfinite(loss) and np.all(np.isfinite(g))
    np.testing.assert_allclose(loss, loss_np, rtol=1e-6)
    np.testing.assert_allclose(loss, (-np.log(F32_EPS) - np.log(F32_HI) - np.log(0.5)) / 3, rtol=1e-6)
    assert np.all(g[:2] == 0.0)
    np.testing.assert_allclose(g[2], np.array([-1.0, 1.0, 1.0]) / 3, rtol=1e-6)
    lab = np.array([0, 2, 0], np.int64)
    loss_s, g_s = run(K, "scce", p, lab)
    np.testing.assert_allclose(loss_s, loss, rtol=1e-7)
    np.testing.assert_array_equal(g_s, g)


# ------------------------------------------------------------------------------ 5. bad input
PAIR_LOSSES = ["mse", "mae", "categorical_crossentropy", "binary_crossentropy"]


@pytest.mark.parametrize("K", MODULES)
@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_pair_loss_bad_input(K, name):
    fn = getattr(K, name)
    p = np.full((3, 4), 0.25, np.float32)
    t = np.full((3, 4), 0.25, np.float32)
    for bad in [p.astype(np.float64), p.astype(np.int64), p.tolist(), 0.5, None]:
        with pytest.raises(TypeError):
            fn(bad, t)
        with pytest.raises(TypeError):
            fn(p, bad)
    for bad in [p.astype(np.float64), p.tolist()]:
        with pytest.raises(TypeError):
            fn(p, t, grad=bad)
    with pytest.raises(ValueError, match="shape"):
        fn(p, t[:, :3].copy())
    with pytest.raises(ValueError, match="shape"):
        fn(p, t.reshape(4, 3))
    with pytest.raises(ValueError, match="shape"):
        fn(p, t, grad=np.empty((3, 5), np.float32))
    big = np.full((3, 8), 0.25, np.float32)
    for nc in [big[:, ::2], np.asfortranarray(p), p.T.copy().T]:
        with pytest.raises(ValueError, match="contiguous"):
            fn(nc, t)
        with pytest.raises(ValueError, match="contiguous"):
            fn(p, nc)
        with pytest.raises(ValueError, match="contiguous"):
            fn(p, t, grad=np.empty((3, 8), np.float32)[:, ::2])
    for shape in [(0,), (0, 4), (4, 0), (2, 0, 3)]:
        e = np.zeros(shape, np.float32)
        with pytest.raises(ValueError, match="empty"):
            fn(e, e.copy())
    s = np.array(0.5, np.float32)   # 0-d
    with pytest.raises(ValueError):
        fn(s, s.copy())
    with pytest.raises(ValueError, match="overlap"):
        fn(p, t, grad=p)
    with pytest.raises(ValueError, match="overlap"):
        fn(p, t, grad=t)
    buf = np.full(13, 0.25, np.float32)
    with pytest.raises(ValueError, match="overlap"):
        fn(buf[:12].reshape(3, 4), t, grad=buf[1:].reshape(3, 4))
    ro = np.empty_like(p)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fn(p, t, grad=ro)


@pytest.mark.parametrize("K", MODULES)
def test_label_losses_bad_labels(K):
    p = np.full((3, 4), 0.25, np.float32)
    cases = {
        "sparse": lambda lab, **kw: K.sparse_categorical_crossentropy(p, lab, **kw),
        "fused": lambda lab, **kw: K.softmax_crossentropy(p, labels=lab, **kw),
    }
    for name, fn in cases.items():
        for bad in [np.array([0, 1, 2], np.int32), np.array([0.0, 1, 2]), [0, 1, 2],
                    np.array([0, 1, 2], np.uint64)]:
            with pytest.raises(TypeError):
                fn(bad)
        for lab in [np.array([0, 1, 4]), np.array([-1, 0, 0]), np.array([0, 2**40, 0]),
                    np.array([0, 1, -(2**62)])]:
            with pytest.raises(ValueError, match="out of range"):
                fn(lab.astype(np.int64))
        for lab in [np.array([0, 1]), np.array([0, 1, 2, 3]), np.zeros((3, 2), np.int64),
                    np.zeros(0, np.int64)]:
            with pytest.raises(ValueError, match="entries"):
                fn(lab.astype(np.int64))
        with pytest.raises(ValueError, match="contiguous"):
            fn(np.zeros(6, np.int64)[::2])
        with pytest.raises(ValueError, match="shape"):
            fn(np.zeros(3, np.int64), grad=np.empty((3, 5), np.float32))
        with pytest.raises(ValueError, match="overlap"):
            fn(np.zeros(3, np.int64), grad=p)
    e = np.zeros((0, 4), np.float32)
    with pytest.raises(ValueError, match="empty"):
        K.sparse_categorical_crossentropy(e, np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="empty"):
        K.softmax_crossentropy(e, labels=np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="empty"):
        K.softmax_crossentropy(np.zeros((3, 0), np.float32), labels=np.zeros(3, np.int64))


@pytest.mark.parametrize("K", MODULES)
def test_softmax_crossentropy_bad_arguments(K):
    x = np.zeros((3, 4), np.float32)
    lab = np.array([0, 1, 2], np.int64)
    t = np.full((3, 4), 0.25, np.float32)
    with pytest.raises(ValueError, match="exactly one"):
        K.softmax_crossentropy(x)
    with pytest.raises(ValueError, match="exactly one"):
        K.softmax_crossentropy(x, labels=lab, target=t)
    with pytest.raises(TypeError):
        K.softmax_crossentropy(x.astype(np.float64), labels=lab)
    with pytest.raises(TypeError):
        K.softmax_crossentropy(x, target=t.astype(np.float64))
    with pytest.raises(ValueError, match="shape"):
        K.softmax_crossentropy(x, target=t[:, :3].copy())
    with pytest.raises(ValueError, match="shape"):
        K.softmax_crossentropy(x, labels=lab, probs=np.empty((4, 3), np.float32))
    with pytest.raises(ValueError, match="overlap"):
        K.softmax_crossentropy(x, labels=lab, grad=x)
    with pytest.raises(ValueError, match="overlap"):
        K.softmax_crossentropy(x, labels=lab, probs=x)
    g = np.empty_like(x)
    with pytest.raises(ValueError, match="overlap"):
        K.softmax_crossentropy(x, labels=lab, probs=g, grad=g)


@pytest.mark.parametrize("K", MODULES)
def test_outputs_overlapping_targets_or_labels_raise(rng, K):
    """Outputs must not share memory with any input, the target and the labels included: the
    kernels read the target while writing probs/grad (probs is target gave a wrong gradient
    silently), and labels overwritten mid-kernel could index out of bounds."""
    x, t = make_inputs(rng, "smce_dense", (4, 5))
    for kw in [dict(probs=t), dict(grad=t), dict(probs=t, grad=np.empty_like(x))]:
        with pytest.raises(ValueError, match="overlap"):
            K.softmax_crossentropy(x, target=t, **kw)
    buf = np.zeros(8, np.float32)
    lab = buf.view(np.int64)                   # 4 labels in the same memory as a (4, 2) output
    lab[:] = [0, 1, 1, 0]
    x2 = rand(rng, 4, 2)
    p2 = rand(rng, 4, 2, lo=0.1, hi=1)
    for kw in [dict(grad=buf.reshape(4, 2)), dict(probs=buf.reshape(4, 2))]:
        with pytest.raises(ValueError, match="overlap"):
            K.softmax_crossentropy(x2, labels=lab, **kw)
    with pytest.raises(ValueError, match="overlap"):
        K.sparse_categorical_crossentropy(p2, lab, grad=buf.reshape(4, 2))
    np.testing.assert_array_equal(lab, [0, 1, 1, 0])   # untouched


def test_results_independent_of_thread_count(rng):
    old = _cpu.get_num_threads()
    try:
        out = []
        for n in (1, 3, 8):
            _cpu.set_num_threads(n)
            res = []
            for name in LOSSES:
                p, t = make_inputs(np.random.default_rng(7), name, (2000, 33))
                res.append(run(_cpu, name, p, t))
            out.append(res)
        for res in out[1:]:
            for (l0, g0), (l1, g1) in zip(out[0], res):
                np.testing.assert_allclose(l1, l0, rtol=1e-12)   # only the reduction order varies
                np.testing.assert_array_equal(g1, g0)
    finally:
        _cpu.set_num_threads(old)


def test_softmax_avx2_level_matches_avx512_level():
    """The softmax row passes at 16 lanes (softmax_avx512.cpp) against 8 (softmax_avx2.cpp):
    softmax forward and the fused softmax cross-entropy (loss, probabilities, gradient) on row
    lengths with every tail and a long row (blocked float sums widened to double)."""
    body = """
r = np.random.default_rng(0)
for cols in (1, 7, 15, 16, 17, 33, 129, 300, 100003):
    x = (5 * r.standard_normal((3, cols))).astype(np.float32)
    lab = r.integers(0, cols, 3).astype(np.int64)
    y = np.empty_like(x)
    _cpu.softmax_forward(x, y)
    pr, g = np.empty_like(x), np.empty_like(x)
    loss = _cpu.softmax_crossentropy(x, labels=lab, probs=pr, grad=g)
    out[f"y_{cols}"], out[f"p_{cols}"], out[f"g_{cols}"], out[f"l_{cols}"] = y, pr, g, np.array(loss)
"""
    lo, hi = avx2_and_avx512(body)
    for k in hi:
        np.testing.assert_allclose(lo[k], hi[k], rtol=2e-6, atol=1e-8, err_msg=k)


@pytest.mark.parametrize("nt", [1, 3])
@pytest.mark.parametrize("offsets", [(64, 96, 112), (64, 64, 80), (0, 512, 0), (256, 0, 16)])
@pytest.mark.parametrize("labels", [True, False])
def test_softmax_crossentropy_output_just_ahead_of_an_input_same_bits(rng, nt, offsets, labels):
    """probs or grad 16-512 bytes after x (or grad after probs) modulo 2 MiB goes through the
    staging rows (store_ahead.h): the same loss and bits as any other layout."""
    rows, cols = 203, 130
    x0 = rand(rng, rows, cols) * 3
    lab = rng.integers(0, cols, rows)
    t0 = np.abs(rand(rng, rows, cols))
    kw = {"labels": lab} if labels else {"target": t0 / t0.sum(1, keepdims=True)}
    old = _cpu.get_num_threads()
    try:
        _cpu.set_num_threads(nt)
        p0, g0 = np.empty_like(x0), np.empty_like(x0)
        want = _cpu.softmax_crossentropy(x0, probs=p0, grad=g0, **kw)
        x, probs, grad = views_at((rows, cols), offsets)
        x[...] = x0
        assert _cpu.softmax_crossentropy(x, probs=probs, grad=grad, **kw) == want
        np.testing.assert_array_equal(probs, p0)
        np.testing.assert_array_equal(grad, g0)
        g1 = np.empty_like(x0)
        _cpu.softmax_crossentropy(x0, grad=g1, **kw)
        _cpu.softmax_crossentropy(x, grad=grad, **kw)   # no probs: exp goes into grad
        np.testing.assert_array_equal(grad, g1)
    finally:
        _cpu.set_num_threads(old)
