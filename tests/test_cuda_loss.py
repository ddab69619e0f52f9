"""kilnet._cuda losses against the CPU reference (kilnet._cpu.ref), Keras semantics.

Every loss: value and gradient on odd shapes (pointwise losses: the grid-stride loop; row losses:
a warp per row up to 1024 columns, a block per row above), the out= form (value written on the
device, no return), determinism (fixed-order reduction: the same bits twice), labels validated
on the device (ValueError without out; NaN loss and NaN rows of the gradient with out, and never
an out-of-bounds read), and argument errors."""
import numpy as np
import pytest

from kilnet import _cpu

pytestmark = pytest.mark.cuda

SHAPES = [(1, 1), (1, 3), (3, 7), (17, 33), (33, 1), (2, 3, 5), (1000, 7), (3, 1025), (2, 5000),
          (129, 10), (1, 100003), (100003, 3)]
ROW_SHAPES = [(1, 1), (3, 7), (17, 33), (2, 3, 5), (1000, 7), (9, 100), (7, 200), (5, 500), (5, 1024),
              (3, 1025), (2, 5000), (129, 10), (64, 1000), (2, 50000)]


def rng(seed):
    return np.random.default_rng(seed)


def uniform(shape, lo, hi, seed):
    return rng(seed).uniform(lo, hi, size=shape).astype(np.float32)


def labels_for(shape, seed):
    rows = int(np.prod(shape[:-1]))
    return rng(seed).integers(0, shape[-1], size=rows).astype(np.int64)


def check_value(v, v_ref, n):
    """Both sum in double; the per-element float maths may differ by an ulp or two."""
    assert isinstance(v, float)
    assert v == pytest.approx(v_ref, rel=1e-5, abs=1e-7), (v, v_ref)


def check_grad(g, g_ref):
    scale = max(float(np.abs(g_ref).max()), 1e-30)
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-5 * scale)


def run_both(gpu, name, host_args, dev_args, shape, **kw):
    """The loss on the CPU reference and on the GPU (poisoned grad); returns values and grads."""
    g_ref = np.zeros(shape, np.float32)
    v_ref = getattr(_cpu.ref, name)(*host_args, grad=g_ref, **kw)
    g = gpu.poisoned(shape)
    v = getattr(gpu.k, name)(*dev_args, grad=g, **kw)
    return v, v_ref, gpu.host(g), g_ref


def pair_inputs(name, shape, seed):
    if name in ("mse", "mae"):
        return uniform(shape, -2, 2, seed), uniform(shape, -2, 2, seed + 1)
    if name == "bce_prob":
        p = uniform(shape, 0, 1, seed)
        p.reshape(-1)[:2] = [0.0, 1.0][: p.size]     # clipped: zero gradient there
        return p, (uniform(shape, 0, 1, seed + 1) > 0.5).astype(np.float32)
    if name == "bce_logits":
        x = uniform(shape, -8, 8, seed)
        x.reshape(-1)[:2] = [30.0, -30.0][: x.size]
        return x, uniform(shape, 0, 1, seed + 1)
    if name == "cce":
        p = uniform(shape, 0.01, 1, seed)
        t = rng(seed + 1).dirichlet(np.ones(shape[-1]), size=shape[:-1]).astype(np.float32)
        return p, t
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["mse", "mae", "bce_prob", "bce_logits", "cce"])
@pytest.mark.parametrize("shape", SHAPES)
def test_pair_losses_match_ref(gpu, name, shape):
    if name == "cce" and shape[-1] * int(np.prod(shape[:-1])) > 200000:
        pytest.skip("covered by the row shapes")
    p, t = pair_inputs(name, shape, seed=sum(shape))
    fn, kw = {"mse": ("mse", {}), "mae": ("mae", {}), "bce_prob": ("binary_crossentropy", {}),
              "bce_logits": ("binary_crossentropy", {"from_logits": True}),
              "cce": ("categorical_crossentropy", {})}[name]
    v, v_ref, g, g_ref = run_both(gpu, fn, (p, t), (gpu.dev(p), gpu.dev(t)), shape, **kw)
    check_value(v, v_ref, p.size)
    check_grad(g, g_ref)


@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_categorical_forms_match_ref(gpu, shape):
    p = uniform(shape, 0.01, 1, 1)
    lab = labels_for(shape, 2)
    v, v_ref, g, g_ref = run_both(gpu, "sparse_categorical_crossentropy", (p, lab),
                                  (gpu.dev(p), gpu.dev(lab)), shape)
    check_value(v, v_ref, p.size)
    check_grad(g, g_ref)
    t = np.zeros(shape, np.float32)
    t.reshape(-1, shape[-1])[np.arange(lab.size), lab] = 1.0
    v, v_ref, g, g_ref = run_both(gpu, "categorical_crossentropy", (p, t), (gpu.dev(p), gpu.dev(t)), shape)
    check_value(v, v_ref, p.size)
    check_grad(g, g_ref)


@pytest.mark.parametrize("shape", ROW_SHAPES + [(4096, 1000), (256, 10)])
@pytest.mark.parametrize("form", ["labels", "target"])
def test_softmax_crossentropy_matches_ref(gpu, shape, form):
    x = uniform(shape, -6, 6, 3)
    x.reshape(-1)[0] = 60.0
    if form == "labels":
        host = {"labels": labels_for(shape, 4)}
    else:
        host = {"target": rng(4).dirichlet(np.ones(shape[-1]), size=shape[:-1]).astype(np.float32)}
    pr_ref, g_ref = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    v_ref = _cpu.ref.softmax_crossentropy(x, probs=pr_ref, grad=g_ref, **host)
    dev = {k: gpu.dev(a) for k, a in host.items()}
    pr, g = gpu.poisoned(shape), gpu.poisoned(shape)
    v = gpu.k.softmax_crossentropy(gpu.dev(x), probs=pr, grad=g, **dev)
    check_value(v, v_ref, x.size)
    np.testing.assert_allclose(gpu.host(pr), pr_ref, rtol=1e-5, atol=1e-7)
    check_grad(gpu.host(g), g_ref)
    # without probs and grad: only the value
    v2 = gpu.k.softmax_crossentropy(gpu.dev(x), **dev)
    check_value(v2, v_ref, x.size)


def test_out_form_and_determinism(gpu):
    cp = gpu.cp
    shape = (300, 77)
    x = uniform(shape, -4, 4, 7)
    lab = labels_for(shape, 8)
    xd, ld = gpu.dev(x), gpu.dev(lab)
    out = cp.full((1,), np.nan, np.float32)
    g = gpu.poisoned(shape)
    assert gpu.k.softmax_crossentropy(xd, labels=ld, grad=g, out=out) is None
    v = gpu.k.softmax_crossentropy(xd, labels=ld)
    assert gpu.host(out)[0] == np.float32(v)
    assert np.isfinite(gpu.host(g)).all()
    p, t = uniform(shape, -1, 1, 9), uniform(shape, -1, 1, 10)
    pd, td = gpu.dev(p), gpu.dev(t)
    for name in ("mse", "mae", "binary_crossentropy", "categorical_crossentropy"):
        a, b = (pd, td) if name in ("mse", "mae") else (cp.abs(pd), cp.abs(td))
        out[...] = np.nan
        assert getattr(gpu.k, name)(a, b, out=out) is None
        v = getattr(gpu.k, name)(a, b)
        assert gpu.host(out)[0] == np.float32(v), name
        assert getattr(gpu.k, name)(a, b) == v, name          # the same bits every time
    big = uniform((1 << 20) + 3,  -1, 1, 11).reshape(-1, 1)
    bd = gpu.dev(big)
    vals = {gpu.k.mse(bd, cp.zeros_like(bd)) for _ in range(3)}
    assert len(vals) == 1
    out[...] = np.nan
    assert gpu.k.sparse_categorical_crossentropy(cp.abs(xd) + 0.1, ld, out=out) is None
    assert np.isfinite(gpu.host(out)[0])


@pytest.mark.parametrize("shape", [(5, 7), (3, 2000)])
@pytest.mark.parametrize("fn", ["softmax_crossentropy", "sparse_categorical_crossentropy"])
@pytest.mark.parametrize("bad", [-1, "cols", -(1 << 62), 1 << 40])
def test_labels_out_of_range(gpu, shape, fn, bad):
    cp = gpu.cp
    rows, cols = shape
    x = uniform(shape, 0.1, 1, 12)
    lab = labels_for(shape, 13)
    lab[2] = cols if bad == "cols" else bad
    xd, ld = gpu.dev(x), gpu.dev(lab)
    call = getattr(gpu.k, fn)
    args = (xd,) if fn == "softmax_crossentropy" else (xd, ld)
    kw = {"labels": ld} if fn == "softmax_crossentropy" else {}
    with pytest.raises(ValueError, match=r"label .* at index 2 is out of range"):
        call(*args, **kw)
    out = cp.zeros((1,), np.float32)
    g = gpu.poisoned(shape)
    assert call(*args, grad=g, out=out, **kw) is None
    assert np.isnan(gpu.host(out)[0])
    gh = gpu.host(g)
    assert np.isnan(gh[2]).all()
    ok = np.delete(gh, 2, axis=0)
    assert np.isfinite(ok).all()


def test_loss_bad_input(gpu):
    k, cp = gpu.k, gpu.cp
    p, t = cp.ones((4, 3), np.float32), cp.ones((4, 3), np.float32)
    with pytest.raises(TypeError, match="CuPy"):
        k.mse(np.ones((4, 3), np.float32), t)
    with pytest.raises(TypeError, match="CuPy"):
        k.mse(p, t, grad=np.empty((4, 3), np.float32))
    with pytest.raises(TypeError, match="float32"):
        k.mae(p, t.astype(cp.float64))
    with pytest.raises(ValueError, match="shape"):
        k.mse(p, cp.ones((3, 4), np.float32))
    with pytest.raises(ValueError, match="contiguous"):
        k.mse(cp.ones((4, 6), np.float32)[:, ::2], t)
    with pytest.raises(ValueError, match="overlaps"):
        k.mse(p, t, grad=p)
    with pytest.raises(ValueError, match="shape"):
        k.mse(p, t, out=cp.empty((2,), np.float32))
    with pytest.raises(TypeError, match="float32"):
        k.mse(p, t, out=cp.empty((1,), np.float64))
    with pytest.raises(TypeError, match="CuPy"):
        k.mse(p, t, out=np.empty((1,), np.float32))
    with pytest.raises(ValueError, match="overlaps"):
        k.mse(p, t, grad=cp.empty((4, 3), np.float32), out=p.reshape(-1)[:1])
    with pytest.raises(ValueError, match="exactly one"):
        k.softmax_crossentropy(p)
    with pytest.raises(ValueError, match="exactly one"):
        k.softmax_crossentropy(p, labels=cp.zeros(4, cp.int64), target=t)
    with pytest.raises(TypeError, match="int64"):
        k.softmax_crossentropy(p, labels=cp.zeros(4, cp.int32))
    with pytest.raises(ValueError, match="entries"):
        k.sparse_categorical_crossentropy(p, cp.zeros(5, cp.int64))
    with pytest.raises(TypeError, match="CuPy"):
        k.sparse_categorical_crossentropy(p, np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="overlaps"):
        k.softmax_crossentropy(p, labels=cp.zeros(4, cp.int64), grad=p)
    with pytest.raises(ValueError, match="empty"):
        k.mse(cp.ones((3, 0), np.float32), cp.ones((3, 0), np.float32))
