"""Activation kernels: elementwise linear/relu/sigmoid/tanh and the row softmax.

Fast kernels vs the naive `_cpu.ref` kernels vs float64 numpy formulas, finite-difference
gradient checks, PyTorch parity, numerical stability, bad input and in-place use."""
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

from conftest import cpu_threads, streaming_case, views_at, assert_grad_close, numeric_grad, rand
from kilnet import _cpu

ACTS = ["linear", "relu", "sigmoid", "tanh"]
SIZES = [1, 3, 7, 17, 33, 1000, 100003]   # 100003 > the OpenMP grain: hits the parallel loops
MODULES = [pytest.param(_cpu, id="fast"), pytest.param(_cpu.ref, id="ref")]


@pytest.fixture
def threads4():
    """Run with 4 OpenMP threads (even on a 1- or 2-core machine) so the parallel paths split."""
    old = _cpu.get_num_threads()
    _cpu.set_num_threads(4)
    yield
    _cpu.set_num_threads(old)


# ----------------------------------------------------------------------------- numpy formulas
def np_act(name, x):
    x = np.asarray(x, dtype=np.float64)
    if name == "linear":
        return x
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "sigmoid":
        e = np.exp(-np.abs(x))                    # 1/(1+e^-x) without overflow, exact tails
        return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    if name == "tanh":
        return np.tanh(x)
    raise AssertionError(name)


def np_act_backward(name, y, dy):
    y = np.asarray(y, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    if name == "linear":
        return dy
    if name == "relu":
        return np.where(y > 0, dy, 0.0)
    if name == "sigmoid":
        return dy * y * (1.0 - y)
    if name == "tanh":
        return dy * (1.0 - y * y)
    raise AssertionError(name)


def np_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_softmax_backward(y, dy):
    y = np.asarray(y, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    return y * (dy - (dy * y).sum(axis=-1, keepdims=True))


def fwd(K, act, x):
    y = np.empty_like(x)
    K.activation_forward(act, x, y)
    return y


def bwd(K, act, y, dy):
    dx = np.empty_like(y)
    K.activation_backward(act, y, dy, dx)
    return dx


def sm_fwd(K, x):
    y = np.empty_like(x)
    K.softmax_forward(x, y)
    return y


def sm_bwd(K, y, dy):
    dx = np.empty_like(y)
    K.softmax_backward(y, dy, dx)
    return dx


def assert_close_scaled(actual, expected, rtol, atol_rel):
    """allclose with the absolute tolerance scaled to the largest expected magnitude."""
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-30)
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol,
                               atol=atol_rel * scale)


# ------------------------------------------------------- 1. fast == ref == numpy, many shapes
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("act", ACTS)
def test_activation_forward_matches_ref_and_numpy(rng, threads4, act, n):
    x = rand(rng, n, lo=-6, hi=6)
    y = fwd(_cpu, act, x)
    y_ref = fwd(_cpu.ref, act, x)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(y, np_act(act, x), rtol=2e-6, atol=1e-7)
    if act in ("linear", "relu"):   # exact operations: bit-identical
        np.testing.assert_array_equal(y, y_ref)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("act", ACTS)
def test_activation_backward_matches_ref_and_numpy(rng, threads4, act, n):
    x = rand(rng, n, lo=-6, hi=6)
    y = fwd(_cpu.ref, act, x)
    dy = rand(rng, n, lo=-2, hi=2)
    dx = bwd(_cpu, act, y, dy)
    dx_ref = bwd(_cpu.ref, act, y, dy)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dx, np_act_backward(act, y, dy), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", [(2, 3, 5), (7, 1, 17), (4, 250)])
@pytest.mark.parametrize("act", ACTS)
def test_activation_any_rank(rng, act, shape):
    x = rand(rng, *shape, lo=-4, hi=4)
    y = fwd(_cpu, act, x)
    assert y.shape == shape
    np.testing.assert_allclose(y, np_act(act, x), rtol=2e-6, atol=1e-7)
    dy = rand(rng, *shape)
    np.testing.assert_allclose(bwd(_cpu, act, y, dy), np_act_backward(act, y, dy), rtol=1e-6, atol=1e-7)


SOFTMAX_SHAPES = [(1, 1), (3, 1), (1, 3), (7, 7), (17, 33), (33, 17), (2, 3, 17), (1000, 7),
                  (7, 1000), (1, 100003), (100003, 3)]


@pytest.mark.parametrize("shape", SOFTMAX_SHAPES)
def test_softmax_forward_matches_ref_and_numpy(rng, threads4, shape):
    x = rand(rng, *shape, lo=-8, hi=8)
    y = sm_fwd(_cpu, x)
    y_ref = sm_fwd(_cpu.ref, x)
    expect = np_softmax(x)
    # A float sum over up to 1e5 terms: a few 1e-6 relative at worst.
    assert_close_scaled(y, expect, rtol=1e-5, atol_rel=1e-6)
    assert_close_scaled(y_ref, expect, rtol=1e-6, atol_rel=1e-7)
    assert_close_scaled(y, y_ref, rtol=1e-5, atol_rel=1e-6)
    np.testing.assert_allclose(y.sum(axis=-1, dtype=np.float64), 1.0, rtol=1e-5)


@pytest.mark.parametrize("offset", [0.0, 10.0])
@pytest.mark.parametrize("shape", SOFTMAX_SHAPES)
def test_softmax_backward_matches_ref_and_numpy(rng, threads4, shape, offset):
    y = sm_fwd(_cpu.ref, rand(rng, *shape, lo=-3, hi=3))
    # offset: dy = 10 +- 2 makes <dy, y> ~ 10 and dy - <dy, y> cancel, which exposes a sloppy
    # (float) accumulation of the dot product over long rows.
    dy = (rand(rng, *shape, lo=-2, hi=2) + np.float32(offset)).astype(np.float32)
    dx = sm_bwd(_cpu, y, dy)
    dx_ref = sm_bwd(_cpu.ref, y, dy)
    expect = np_softmax_backward(y, dy)
    # dx = y (dy - <dy, y>): float32 rounding of the bracket is ~eps*|dy|, so the error scales
    # with y*max|dy|, not with |dx|.
    scale = np.abs(y.astype(np.float64)) * float(np.abs(dy).max())
    np.testing.assert_array_less(np.abs(dx - expect), 1e-6 * scale + 1e-30)
    np.testing.assert_array_less(np.abs(dx_ref - expect), 1e-6 * scale + 1e-30)


# --------------------------------------------------------- 2. gradients vs finite differences
@pytest.mark.parametrize("K", MODULES)
@pytest.mark.parametrize("act", ACTS)
def test_activation_gradient_finite_differences(rng, K, act):
    x = rand(rng, 3, 7, lo=-3, hi=3)
    if act == "relu":   # keep away from the kink at 0 (farther than the FD step)
        x = np.where(np.abs(x) < 0.05, np.float32(0.5), x).astype(np.float32)
    w = rng.uniform(-1, 1, size=x.shape)          # L = sum(w * act(x)), so dL/dy = w
    f = lambda: float(np.sum(w * fwd(K, act, x).astype(np.float64)))
    num = numeric_grad(f, x, eps=1e-3)
    y = fwd(K, act, x)
    dx = bwd(K, act, y, w.astype(np.float32))
    assert_grad_close(dx, num, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("K", MODULES)
@pytest.mark.parametrize("shape", [(1, 5), (4, 7), (2, 3, 4)])
def test_softmax_gradient_finite_differences(rng, K, shape):
    x = rand(rng, *shape, lo=-3, hi=3)
    w = rng.uniform(-1, 1, size=x.shape)
    f = lambda: float(np.sum(w * sm_fwd(K, x).astype(np.float64)))
    num = numeric_grad(f, x, eps=1e-3)
    dx = sm_bwd(K, sm_fwd(K, x), w.astype(np.float32))
    assert_grad_close(dx, num, rtol=1e-2, atol=1e-3)


# ------------------------------------------------------------------------- 3. PyTorch parity
@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh"])
def test_activation_torch_parity(rng, act):
    torch = pytest.importorskip("torch", exc_type=ImportError)
    x = rand(rng, 17, 33, lo=-5, hi=5)
    x[0, :3] = [0.0, 1e-30, -1e-30]    # relu's kink: torch also gives gradient 0 at x == 0
    dy = rand(rng, 17, 33)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = getattr(torch, act)(xt)
    yt.backward(torch.from_numpy(dy))
    y = fwd(_cpu, act, x)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(bwd(_cpu, act, y, dy), xt.grad.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape", [(17, 33), (3, 1000), (2, 5, 7)])
def test_softmax_torch_parity(rng, shape):
    torch = pytest.importorskip("torch", exc_type=ImportError)
    x = rand(rng, *shape, lo=-6, hi=6)
    dy = rand(rng, *shape)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = torch.softmax(xt, dim=-1)
    yt.backward(torch.from_numpy(dy))
    y = sm_fwd(_cpu, x)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(sm_bwd(_cpu, y, dy), xt.grad.numpy(), rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------- 4. numerical stability
EXTREMES = np.array([1e4, -1e4, 88, -88, 89, -89, 0, 3e38, -3e38], dtype=np.float32)


@pytest.mark.parametrize("K", MODULES)
def test_elementwise_extremes_are_finite_and_exact(K):
    with np.errstate(over="ignore"):
        for act in ACTS:
            y = fwd(K, act, EXTREMES)
            assert np.all(np.isfinite(y)), (act, y)
            np.testing.assert_allclose(y, np_act(act, EXTREMES), rtol=1e-6, atol=1e-38)
    s = fwd(K, "sigmoid", EXTREMES)
    assert s[0] == 1.0 and s[1] == 0.0 and s[6] == 0.5
    assert np.all((s >= 0) & (s <= 1))
    # Saturated outputs give zero (not NaN) gradients.
    dx = bwd(K, "sigmoid", s, np.ones_like(s))
    assert np.all(np.isfinite(dx)) and dx[0] == 0.0 and dx[1] == 0.0


@pytest.mark.parametrize("K", MODULES)
def test_softmax_huge_values(K):
    x = np.array([[1e4, -1e4, 0.0],
                  [88.0, 89.0, -89.0],
                  [-89.0, -88.0, -1e4],
                  [3e38, 3e38, -3e38],
                  [1e30, 1e30, 1e30],
                  [-1e4, -1e4, -1e4]], dtype=np.float32)
    y = sm_fwd(K, x)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y.sum(axis=1, dtype=np.float64), 1.0, rtol=1e-6)
    e = 1.0 / (1.0 + np.e)
    expect = np.array([[1, 0, 0],
                       [e, 1 - e, 0],
                       [e, 1 - e, 0],
                       [0.5, 0.5, 0],
                       [1 / 3, 1 / 3, 1 / 3],
                       [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(y, expect, rtol=1e-6, atol=1e-30)
    dx = sm_bwd(K, y, rand(np.random.default_rng(0), *x.shape))
    assert np.all(np.isfinite(dx))


# ------------------------------------------------------------------------------ 5. bad input
def test_unknown_activation_lists_valid_names():
    x = np.zeros(3, np.float32)
    for bad in ["gelu", "softmax", "Relu", ""]:
        with pytest.raises(ValueError) as e:
            _cpu.activation_forward(bad, x, np.empty_like(x))
        msg = str(e.value)
        assert all(n in msg for n in ACTS), msg
        with pytest.raises(ValueError):
            _cpu.activation_backward(bad, x, x.copy(), np.empty_like(x))


@pytest.mark.parametrize("K", MODULES)
def test_activation_bad_types(K):
    x = np.zeros((2, 3), np.float32)
    y = np.empty_like(x)
    for bad in [x.astype(np.float64), x.astype(np.float16), x.astype(np.int32), x.tolist(), 1.0, None]:
        with pytest.raises(TypeError):
            K.activation_forward("relu", bad, y)
        with pytest.raises(TypeError):
            K.activation_forward("relu", x, bad)
        with pytest.raises(TypeError):
            K.activation_backward("relu", x, bad, y)
        with pytest.raises(TypeError):
            K.softmax_forward(bad, y)
        with pytest.raises(TypeError):
            K.softmax_backward(x, x.copy(), bad)
    with pytest.raises(TypeError):   # non-native byte order is not float32 for the kernels
        K.activation_forward("relu", x.astype(">f4"), y)
    with pytest.raises(TypeError):
        K.activation_forward(3, x, y)


def test_equivalent_float32_dtype_object_is_accepted():
    """A float32 array whose dtype object is not numpy's singleton (e.g. carrying metadata, or
    rebuilt by a serializer) is still float32 for the kernels."""
    dt = np.dtype(np.float32, metadata={"origin": "elsewhere"})
    x = np.linspace(-1, 1, 6).astype(dt)
    assert x.dtype == np.float32 and x.dtype is not np.dtype(np.float32)
    y = np.empty(6, np.float32)
    _cpu.activation_forward("relu", x, y)
    np.testing.assert_array_equal(y, np.maximum(x, 0))


@pytest.mark.parametrize("K", MODULES)
def test_activation_bad_shapes_and_layout(K):
    x = np.zeros((4, 6), np.float32)
    with pytest.raises(ValueError, match="shape"):
        K.activation_forward("tanh", x, np.empty((6, 4), np.float32))
    with pytest.raises(ValueError, match="shape"):
        K.activation_forward("tanh", x, np.empty(24, np.float32))
    with pytest.raises(ValueError, match="shape"):
        K.activation_backward("tanh", x, np.zeros((4, 5), np.float32), np.empty_like(x))
    with pytest.raises(ValueError, match="shape"):
        K.activation_backward("tanh", x, x.copy(), np.empty((4, 5), np.float32))
    with pytest.raises(ValueError, match="shape"):
        K.softmax_forward(x, np.empty((4, 5), np.float32))
    with pytest.raises(ValueError, match="shape"):
        K.softmax_backward(x, np.zeros((3, 6), np.float32), np.empty_like(x))
    # Non-contiguous inputs and outputs.
    big = np.zeros((4, 12), np.float32)
    for nc in [big[:, ::2], np.asfortranarray(x), x.T]:
        out = np.empty(nc.shape, np.float32)
        with pytest.raises(ValueError, match="contiguous"):
            K.activation_forward("relu", nc, out)
        with pytest.raises(ValueError, match="contiguous"):
            K.activation_forward("relu", np.zeros(nc.shape, np.float32), nc)
        with pytest.raises(ValueError, match="contiguous"):
            K.activation_backward("relu", np.zeros(nc.shape, np.float32), nc, out)
        with pytest.raises(ValueError, match="contiguous"):
            K.softmax_forward(nc, out)
        with pytest.raises(ValueError, match="contiguous"):
            K.softmax_backward(np.zeros(nc.shape, np.float32), np.zeros(nc.shape, np.float32), nc)
    ro = np.empty_like(x)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        K.activation_forward("relu", x, ro)
    with pytest.raises(ValueError, match="read-only"):
        K.softmax_forward(x, ro)


@pytest.mark.parametrize("K", MODULES)
def test_softmax_empty_and_scalar_raise(K):
    for shape in [(0,), (0, 5), (5, 0), (3, 0, 2)]:
        e = np.zeros(shape, np.float32)
        with pytest.raises(ValueError, match="empty"):
            K.softmax_forward(e, np.empty_like(e))
        with pytest.raises(ValueError, match="empty"):
            K.softmax_backward(e, e.copy(), np.empty_like(e))
    s = np.zeros((), np.float32)
    with pytest.raises(ValueError):
        K.softmax_forward(s, np.empty_like(s))


@pytest.mark.parametrize("K", MODULES)
def test_elementwise_empty_is_a_noop(K):
    # Elementwise maps are well defined on zero elements (numpy and Keras return an empty array),
    # so unlike the reductions (softmax, losses) an empty array is accepted and nothing happens.
    for act in ACTS:
        e = np.zeros((0, 4), np.float32)
        K.activation_forward(act, e, np.empty_like(e))
        K.activation_backward(act, e, e.copy(), np.empty_like(e))


@pytest.mark.parametrize("K", MODULES)
def test_activation_overlapping_outputs_raise(K):
    buf = np.zeros(10, np.float32)
    a, b = buf[:9], buf[1:]              # overlap but not the same array
    with pytest.raises(ValueError, match="overlap"):
        K.activation_forward("sigmoid", a, b)
    y = np.full(9, 0.5, np.float32)
    with pytest.raises(ValueError, match="overlap"):
        K.activation_backward("sigmoid", y, a, b)
    with pytest.raises(ValueError, match="overlap"):   # dx may be dy, never y
        K.activation_backward("sigmoid", y, np.ones_like(y), y)
    m = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="overlap"):
        K.softmax_backward(m, np.ones_like(m), m)
    buf2 = np.zeros(13, np.float32)
    with pytest.raises(ValueError, match="overlap"):
        K.softmax_forward(buf2[:12].reshape(3, 4), buf2[1:].reshape(3, 4))
    with pytest.raises(ValueError, match="overlap"):
        K.softmax_backward(m, buf2[:12].reshape(3, 4), buf2[1:].reshape(3, 4))


# ------------------------------------------------------------------------------- 6. in place
@pytest.mark.parametrize("n", [7, 100003])
@pytest.mark.parametrize("K", MODULES)
@pytest.mark.parametrize("act", ACTS)
def test_activation_in_place(rng, threads4, K, act, n):
    x = rand(rng, n, lo=-4, hi=4)
    expect = fwd(K, act, x)
    xi = x.copy()
    K.activation_forward(act, xi, xi)
    np.testing.assert_array_equal(xi, expect)
    dy = rand(rng, n)
    expect_dx = bwd(K, act, expect, dy)
    dyi = dy.copy()
    K.activation_backward(act, expect, dyi, dyi)
    np.testing.assert_array_equal(dyi, expect_dx)


@pytest.mark.parametrize("shape", [(3, 7), (2, 100003)])
@pytest.mark.parametrize("K", MODULES)
def test_softmax_in_place(rng, threads4, K, shape):
    x = rand(rng, *shape, lo=-4, hi=4)
    expect = sm_fwd(K, x)
    xi = x.copy()
    K.softmax_forward(xi, xi)
    np.testing.assert_array_equal(xi, expect)
    dy = rand(rng, *shape)
    expect_dx = sm_bwd(K, expect, dy)
    dyi = dy.copy()
    K.softmax_backward(expect, dyi, dyi)
    np.testing.assert_array_equal(dyi, expect_dx)


@pytest.mark.parametrize("cols", [1, 7, 8, 9, 127, 128, 129, 300, 1000])
def test_softmax_vector_exp_matches_reference(cols):
    """The AVX2 softmax passes (a polynomial exp, block sums): every tail length and block edge,
    logits spread far enough that some exps underflow, against the double-precision reference."""
    rng = np.random.default_rng(cols)
    x = (rng.normal(size=(5, cols)) * 30).astype(np.float32)
    y, ref = np.empty_like(x), np.empty_like(x)
    _cpu.softmax_forward(x, y)
    _cpu.ref.softmax_forward(x, ref)
    np.testing.assert_allclose(y, ref, rtol=2e-5, atol=1e-30)
    lab = rng.integers(0, cols, 5)
    p, g, p2, g2 = (np.empty_like(x) for _ in range(4))
    loss = _cpu.softmax_crossentropy(x, labels=lab, probs=p, grad=g)
    ref_loss = _cpu.ref.softmax_crossentropy(x, labels=lab, probs=p2, grad=g2)
    assert loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
    assert _cpu.softmax_crossentropy(x, labels=lab) == pytest.approx(loss, rel=1e-6, abs=1e-7)
    np.testing.assert_allclose(p, p2, rtol=2e-5, atol=1e-30)
    np.testing.assert_allclose(g, g2, rtol=2e-5, atol=1e-9)


def test_softmax_propagates_nan():
    x = np.arange(20, dtype=np.float32).reshape(2, 10)
    x[0, 3] = np.nan
    y = np.empty_like(x)
    _cpu.softmax_forward(x, y)
    assert np.isnan(y[0]).all() and np.isfinite(y[1]).all()


def test_avx2_level_matches_avx512_level():
    """Sigmoid and tanh forward at 16 lanes (activation_avx512.cpp, polynomial exp and rational
    tanh) against the avx2 level's per-element libm loop, in child processes (KILNET_SIMD is read
    once per process): odd sizes, saturation, NaN."""
    import tempfile
    code = """
import sys
import numpy as np
from kilnet import _cpu
out = {"level": np.array(_cpu.simd_level())}
r = np.random.default_rng(0)
for n in (1, 7, 15, 17, 33, 1000, 100003):
    x = r.uniform(-12, 12, n).astype(np.float32)
    x[: min(n, 4)] = np.array([np.nan, 0.0, -100.0, 100.0], np.float32)[: min(n, 4)]
    for act in ("sigmoid", "tanh"):
        y = np.empty_like(x)
        _cpu.activation_forward(act, x, y)
        out[f"{act}_{n}"] = y
np.savez(sys.argv[1], **out)
"""
    res = {}
    with tempfile.TemporaryDirectory() as d:
        for level in ("avx512", "avx2"):
            path = os.path.join(d, level + ".npz")
            p = subprocess.run([sys.executable, "-c", code, path], env=dict(os.environ, KILNET_SIMD=level),
                               capture_output=True, text=True, timeout=120)
            assert p.returncode == 0, p.stderr[-2000:]
            with np.load(path) as z:
                res[level] = {k: z[k] for k in z.files}
    if str(res["avx512"].pop("level")) != "avx512":
        pytest.skip("no AVX-512 on this machine")
    assert str(res["avx2"].pop("level")) == "avx2"
    for k, hi in res["avx512"].items():
        np.testing.assert_allclose(res["avx2"][k], hi, rtol=1e-6, atol=1e-7, err_msg=k)   # NaN == NaN


@pytest.mark.parametrize("nt", [1, 3])
@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh", "linear"])
@pytest.mark.parametrize("offsets", [(64, 80, 128), (4096, 4096 + 512, 0), (0, 16, 32)])
def test_activation_output_just_ahead_of_an_input_same_bits(rng, nt, act, offsets):
    """y 16-512 bytes after x (dx after y or dy) modulo 2 MiB goes through staging blocks
    (store_ahead.h): the same bits as any other layout, at any thread count."""
    n = 70_001   # several staging blocks and a ragged end
    x0, dy0 = streaming_case(rng, n)
    with cpu_threads(nt):
        y0, dx0 = np.empty_like(x0), np.empty_like(x0)
        _cpu.activation_forward(act, x0, y0)
        _cpu.activation_backward(act, y0, dy0, dx0)
        x, y, dx = views_at((n,), offsets)
        x[...] = x0
        _cpu.activation_forward(act, x, y)
        np.testing.assert_array_equal(y, y0)
        dy = views_at((n,), (offsets[1] - 16,))[0]
        dy[...] = dy0
        _cpu.activation_backward(act, y, dy, dx)
        np.testing.assert_array_equal(dx, dx0)


def _cpu_vendor():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def test_staging_follows_the_cpu_and_KILNET_STAGING():
    """Outputs just ahead of an input go through staging only on Intel, where that layout stalls
    (store_ahead.h); KILNET_STAGING=on|off overrides, so CI runs the staging path on any CPU; a
    bogus value warns and is ignored."""
    import kilnet.backend as backend
    vendor = _cpu_vendor()
    forced = os.environ.get("KILNET_STAGING")
    if forced in ("on", "off"):
        assert backend.stages_store_ahead() == (forced == "on")
    elif vendor is not None and platform.machine() in ("x86_64", "AMD64"):
        assert backend.stages_store_ahead() == (vendor == "GenuineIntel"), vendor
    for value, want in (("on", "True"), ("off", "False")):
        p = subprocess.run([sys.executable, "-c", "from kilnet import _cpu; print(_cpu.stages_store_ahead())"],
                           env=dict(os.environ, KILNET_STAGING=value), capture_output=True, text=True, timeout=120)
        assert p.returncode == 0 and p.stdout.strip() == want, (value, p.stdout, p.stderr[-2000:])
    bogus = subprocess.run([sys.executable, "-W", "always", "-c", "import kilnet"], capture_output=True, text=True,
                           env=dict(os.environ, KILNET_STAGING="yes"), timeout=120)
    assert bogus.returncode == 0 and "KILNET_STAGING='yes' is not 'on' or 'off'" in bogus.stderr, bogus.stderr[-2000:]
