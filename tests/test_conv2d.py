"""conv2d forward/backward: the fast kernels against the reference loops (kilnet._cpu.ref), against
PyTorch, and against finite differences; every dispatch path (AVX2 direct, general im2col+gemm,
scalar), thread counts, and bad input; the fused activations (act=, y=) against the reference
and against the unfused composition with activation_forward/backward."""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import HAVE_TORCH, assert_grad_close, numeric_grad, rand
from kilnet import _cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def geometry(size, k, stride, dil, padding):
    """Keras output size and (top, bottom) padding for one axis, or None when 'valid' leaves no
    output."""
    eff = (k - 1) * dil + 1
    if padding == "valid":
        if size < eff:
            return None
        return (size - eff) // stride + 1, 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return out, total // 2, total - total // 2


def make_case(rng, N, H, W, C, K, R, S, stride, dil, padding):
    """Arrays and kwargs for one convolution, or None when the shape has no output or needs more
    padding at the bottom/right than at the top/left (see test_same_asymmetric_padding)."""
    gh, gw = geometry(H, R, stride, dil, padding), geometry(W, S, stride, dil, padding)
    if gh is None or gw is None:
        return None
    (P, top, bottom), (Q, left, right) = gh, gw
    if bottom > top or right > left:
        return None
    x = rand(rng, N, H, W, C)
    w = rand(rng, R, S, C, K)
    b = rand(rng, K)
    kw = dict(stride=(stride, stride), padding=(top, left), dilation=(dil, dil))
    return x, w, b, (N, P, Q, K), kw


def run_fast_and_ref(x, w, b, yshape, kw, rng, with_dx=True):
    y = np.full(yshape, np.nan, np.float32)       # every element must be written
    y_ref = np.empty(yshape, np.float32)
    _cpu.conv2d_forward(x, w, b, y, **kw)
    _cpu.ref.conv2d_forward(x, w, b, y_ref, **kw)
    dy = rand(rng, *yshape)
    dw0, db0 = rand(rng, *w.shape), rand(rng, *b.shape)   # dw and db accumulate onto these
    out = {}
    for name, mod in (("fast", _cpu), ("ref", _cpu.ref)):
        dx = np.full(x.shape, np.nan, np.float32) if with_dx else None   # dx is overwritten
        dw, db = dw0.copy(), db0.copy()
        mod.conv2d_backward(dy, x, w, dx, dw, db, **kw)
        out[name] = (dx, dw, db)
    return (y, y_ref), out


def assert_matches_ref(x, w, b, yshape, kw, rng, with_dx=True):
    (y, y_ref), out = run_fast_and_ref(x, w, b, yshape, kw, rng, with_dx)
    R, S, C, K = w.shape
    N, P, Q, _ = yshape
    # float32 sums of n terms of size ~1: allow ~sqrt(n) ulps of the sum's scale
    tol = lambda n: 2e-6 * max(1.0, np.sqrt(n)) * 4  # noqa: E731
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=tol(R * S * C), err_msg="y")
    (dx, dw, db), (dx_r, dw_r, db_r) = out["fast"], out["ref"]
    if with_dx:
        np.testing.assert_allclose(dx, dx_r, rtol=1e-5, atol=tol(R * S * K), err_msg="dx")
    np.testing.assert_allclose(dw, dw_r, rtol=1e-5, atol=tol(N * P * Q), err_msg="dw")
    np.testing.assert_allclose(db, db_r, rtol=1e-5, atol=tol(N * P * Q), err_msg="db")


@pytest.fixture
def threads():
    """Restores the thread count after a test that changes it."""
    old = _cpu.get_num_threads()
    yield
    _cpu.set_num_threads(old)


# ------------------------------------------------------------------------- against the reference
def random_shapes(seed, count):
    rng = np.random.default_rng(seed)
    shapes = []
    while len(shapes) < count:
        s = dict(N=int(rng.choice([1, 2, 3])), H=int(rng.choice([1, 5, 7, 9, 13, 28])),
                 W=int(rng.choice([1, 5, 7, 9, 13, 28])), C=int(rng.choice([1, 2, 3, 7, 16, 33])),
                 K=int(rng.choice([1, 5, 8, 17, 32, 33])), R=int(rng.choice([1, 2, 3, 5])),
                 S=int(rng.choice([1, 2, 3, 5])), stride=int(rng.choice([1, 2])),
                 dil=int(rng.choice([1, 2])), padding=str(rng.choice(["valid", "same"])))
        if make_case(np.random.default_rng(0), **s) is not None:
            shapes.append(s)
    return shapes


@pytest.mark.parametrize("shape", random_shapes(2024, 60), ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
def test_random_shapes_match_reference(shape, rng):
    assert_matches_ref(*make_case(rng, **shape), rng)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dil", [1, 2])
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("C,K", [(1, 32), (3, 17), (16, 33), (33, 8)])
def test_stride_padding_dilation_grid(stride, dil, padding, C, K, rng):
    # odd sizes: H=9, W=7 with 3x3 windows keep 'same' symmetric for both strides
    assert_matches_ref(*make_case(rng, 2, 9, 7, C, K, 3, 3, stride, dil, padding), rng)


@pytest.mark.parametrize("nthreads", [1, 2, 3])
@pytest.mark.parametrize("N", [1, 2, 5])
def test_thread_counts_and_batch_splits(nthreads, N, threads, rng):
    # N < threads cuts images into row blocks (and dx into private per-thread copies)
    _cpu.set_num_threads(nthreads)
    assert_matches_ref(*make_case(rng, N, 28, 13, 16, 32, 3, 3, 1, 1, "same"), rng)
    assert_matches_ref(*make_case(rng, N, 13, 28, 7, 33, 5, 3, 2, 1, "valid"), rng)


def test_first_layer_shape_without_dx(rng):
    # the canonical model's first layer: 28x28x1 -> 26x26x32, 3x3 valid; the caller skips dx
    x, w, b, yshape, kw = make_case(rng, 32, 28, 28, 1, 32, 3, 3, 1, 1, "valid")
    assert_matches_ref(x, w, b, yshape, kw, rng, with_dx=False)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("C", [8, 16])
def test_valid_exact_fit(stride, C, threads, rng):
    # 'valid' windows that end exactly at the border: x is read in place and dx is accumulated
    # in place (S*C a multiple of 8), with both whole-image and row-block work items
    for nthreads in (1, 2):
        _cpu.set_num_threads(nthreads)
        assert_matches_ref(*make_case(rng, 3, 9, 9, C, 24, 3, 3, stride, 1, "valid"), rng)
        assert_matches_ref(*make_case(rng, 1, 9, 9, C, 8, 1, 1, stride, 1, "valid"), rng)


def test_no_bias_and_no_db(rng):
    x, w, _, yshape, kw = make_case(rng, 2, 7, 9, 3, 5, 3, 3, 1, 1, "same")
    y, y_ref = np.empty(yshape, np.float32), np.empty(yshape, np.float32)
    _cpu.conv2d_forward(x, w, None, y, **kw)
    _cpu.ref.conv2d_forward(x, w, None, y_ref, **kw)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    dy = rand(rng, *yshape)
    dw, dw_ref = np.zeros_like(w), np.zeros_like(w)
    _cpu.conv2d_backward(dy, x, w, None, dw, None, **kw)
    _cpu.ref.conv2d_backward(dy, x, w, None, dw_ref, None, **kw)
    np.testing.assert_allclose(dw, dw_ref, rtol=1e-5, atol=1e-5)


def test_explicit_padding_larger_than_the_window(rng):
    # padding beyond what 'same' needs: whole output rows/columns see only zeros (and the bias)
    x, w, b = rand(rng, 2, 5, 6, 3), rand(rng, 1, 2, 3, 8), rand(rng, 8)
    kw = dict(stride=(1, 2), padding=(2, 1), dilation=(1, 1))
    assert_matches_ref(x, w, b, (2, 9, 4, 8), kw, rng)


# Keras 'same' with the odd pixel at the bottom/right (even kernels, or stride 2 on even sizes):
# the bottom/right padding is implied by P and Q.
@pytest.mark.parametrize("H,R,stride", [(6, 2, 1), (28, 3, 2)])
def test_same_asymmetric_padding(H, R, stride, rng):
    P, top, _ = geometry(H, R, stride, 1, "same")
    x, w, b = rand(rng, 2, H, H, 3), rand(rng, R, R, 3, 8), rand(rng, 8)
    assert_matches_ref(x, w, b, (2, P, P, 8), dict(stride=(stride, stride), padding=(top, top)), rng)


# ------------------------------------------------------------------------- fused activations
ACTS = ["linear", "relu", "sigmoid", "tanh"]


def assert_fused_matches(x, w, b, yshape, kw, act, rng, with_dx=True):
    """The fused kernel (act inside conv2d_forward/backward) against the fused reference and
    against the unfused composition: linear conv, then activation_forward; activation_backward,
    then linear conv backward."""
    y = np.full(yshape, np.nan, np.float32)
    y_ref, y_unf = np.empty(yshape, np.float32), np.empty(yshape, np.float32)
    _cpu.conv2d_forward(x, w, b, y, **kw, act=act)
    _cpu.ref.conv2d_forward(x, w, b, y_ref, **kw, act=act)
    _cpu.conv2d_forward(x, w, b, y_unf, **kw)
    _cpu.activation_forward(act, y_unf, y_unf)
    R, S, C, K = w.shape
    N, P, Q, _ = yshape
    tol = lambda n: 2e-6 * max(1.0, np.sqrt(n)) * 4  # noqa: E731  (as in assert_matches_ref)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=tol(R * S * C), err_msg=f"y {act}")
    np.testing.assert_allclose(y, y_unf, rtol=1e-6, atol=1e-6, err_msg=f"y {act} vs unfused")

    # All three backward passes get the same y, so relu's mask cannot differ at values near 0.
    dy = rand(rng, *yshape)
    dw0, db0 = rand(rng, *w.shape), rand(rng, *b.shape)
    out = {}
    for name in ("fast", "ref", "unfused"):
        dx = np.full(x.shape, np.nan, np.float32) if with_dx else None
        dw, db = dw0.copy(), db0.copy()
        if name == "unfused":
            dz = np.empty_like(dy)
            _cpu.activation_backward(act, y_ref, dy, dz)
            _cpu.conv2d_backward(dz, x, w, dx, dw, db, **kw)
        else:
            mod = _cpu if name == "fast" else _cpu.ref
            mod.conv2d_backward(dy, x, w, dx, dw, db, **kw, act=act, y=y_ref)
        out[name] = (dx, dw, db)
    for other, scale in (("ref", 1.0), ("unfused", 0.25)):
        for i, (what, n) in enumerate((("dx", R * S * K), ("dw", N * P * Q), ("db", N * P * Q))):
            if what == "dx" and not with_dx:
                continue
            np.testing.assert_allclose(out["fast"][i], out[other][i], rtol=1e-5, atol=scale * tol(n),
                                       err_msg=f"{what} {act} vs {other}")


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", random_shapes(77, 16), ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
def test_fused_activation_random_shapes(shape, act, rng):
    assert_fused_matches(*make_case(rng, **shape), act, rng)


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("act", ACTS)
def test_fused_activation_threads_and_geometry(nthreads, act, threads, rng):
    _cpu.set_num_threads(nthreads)
    for N, H, W, C, K, R, S, stride, dil, padding in [
            (32, 28, 28, 1, 32, 3, 3, 1, 1, "valid"),    # the canonical first layer
            (1, 13, 9, 16, 33, 3, 3, 2, 1, "same"),      # one image: row blocks, private dx
            (3, 9, 7, 3, 17, 3, 3, 1, 2, "same"),        # dilation: per-tap segments
            (2, 9, 9, 8, 24, 3, 3, 2, 1, "valid"),       # dx accumulated in place
            (5, 7, 9, 33, 5, 1, 1, 1, 1, "valid")]:      # 1x1, narrow K
        case = make_case(rng, N, H, W, C, K, R, S, stride, dil, padding)
        assert_fused_matches(*case, act, rng)
        assert_fused_matches(*case, act, rng, with_dx=False)


def test_linear_without_y_is_the_plain_kernel(rng):
    # act='linear' (the default) with y=None, or with a y that is then ignored: bit for bit the same
    x, w, b, yshape, kw = make_case(rng, 2, 9, 7, 3, 17, 3, 3, 1, 1, "same")
    y0, y1 = np.empty(yshape, np.float32), np.empty(yshape, np.float32)
    _cpu.conv2d_forward(x, w, b, y0, **kw)
    _cpu.conv2d_forward(x, w, b, y1, **kw, act="linear")
    np.testing.assert_array_equal(y0, y1)
    dy = rand(rng, *yshape)
    res = []
    for extra in ({}, dict(act="linear"), dict(act="linear", y=None), dict(act="linear", y=-y0)):
        dx, dw, db = np.empty_like(x), np.zeros_like(w), np.zeros_like(b)
        _cpu.conv2d_backward(dy, x, w, dx, dw, db, **kw, **extra)
        res.append((dx, dw, db))
    for r in res[1:]:
        for a, b_ in zip(res[0], r):
            np.testing.assert_array_equal(a, b_)


def test_relu_kills_the_gradient_where_y_is_zero(rng):
    # dz = y > 0 ? dy : 0: with y all zero, dw and db are untouched and dx is zero
    x, w, b, yshape, kw = make_case(rng, 2, 7, 7, 3, 8, 3, 3, 1, 1, "valid")
    dx, dw, db = np.full_like(x, np.nan), np.ones_like(w), np.ones_like(b)
    _cpu.conv2d_backward(rand(rng, *yshape), x, w, dx, dw, db, **kw, act="relu",
                         y=np.zeros(yshape, np.float32))
    assert not dx.any() and (dw == 1).all() and (db == 1).all()


@pytest.mark.parametrize("act", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("stride,dil,pad", [(1, 1, (1, 1)), (2, 1, (1, 0)), (1, 2, (0, 2))])
def test_fused_gradients_match_finite_differences(act, stride, dil, pad):
    N, H, W, C, K, R, S = 2, 5, 6, 2, 3, 3, 2
    kw = dict(stride=(stride, stride), padding=pad, dilation=(dil, dil))
    P = (H + 2 * pad[0] - (R - 1) * dil - 1) // stride + 1
    Q = (W + 2 * pad[1] - (S - 1) * dil - 1) // stride + 1
    z = np.empty((N, P, Q, K), np.float32)
    for seed in range(200):
        # relu: no pre-activation within 2e-3 of its kink, where a 1e-3 step (which moves z by at
        # most 1e-3 here: |x|, |w| <= 1) would straddle it
        rng = np.random.default_rng(seed)
        x, w, b = rand(rng, N, H, W, C), rand(rng, R, S, C, K), rand(rng, K)
        _cpu.ref.conv2d_forward(x, w, b, z, **kw)
        if act != "relu" or np.abs(z).min() > 2e-3:
            break
    g = rand(rng, N, P, Q, K)          # loss = sum(y * g)
    y = np.empty((N, P, Q, K), np.float32)

    def loss():
        _cpu.conv2d_forward(x, w, b, y, **kw, act=act)
        return np.sum(y.astype(np.float64) * g)

    loss()
    y_fwd = y.copy()
    dx, dw, db = np.empty_like(x), np.zeros_like(w), np.zeros_like(b)
    _cpu.conv2d_backward(g, x, w, dx, dw, db, **kw, act=act, y=y_fwd)
    assert_grad_close(dx, numeric_grad(loss, x))
    assert_grad_close(dw, numeric_grad(loss, w))
    assert_grad_close(db, numeric_grad(loss, b))


def test_fused_bad_arguments(rng):
    x, w, b = rand(rng, 2, 7, 7, 3), rand(rng, 3, 3, 3, 4), rand(rng, 4)
    y = np.empty((2, 5, 5, 4), np.float32)
    dy, dw = rand(rng, 2, 5, 5, 4), np.zeros_like(w)
    for fn in (lambda a: _cpu.conv2d_forward(x, w, b, y, act=a),
               lambda a: _cpu.conv2d_backward(dy, x, w, None, dw, None, act=a, y=y)):
        with pytest.raises(ValueError, match="softmax"):
            fn("softmax")
        with pytest.raises(ValueError, match="unknown activation"):
            fn("gelu")
    with pytest.raises(ValueError, match="'y'"):   # y is required for any act but linear
        _cpu.conv2d_backward(dy, x, w, None, dw, None, act="relu")
    with pytest.raises(ValueError, match="'y' must have shape"):
        _cpu.conv2d_backward(dy, x, w, None, dw, None, act="relu", y=np.empty((2, 5, 4, 4), np.float32))
    with pytest.raises(TypeError, match="float32"):
        _cpu.conv2d_backward(dy, x, w, None, dw, None, act="relu", y=y.astype(np.float64))
    # no output may overlap y (an input here): dx, dw and db each share a buffer with it
    buf = np.zeros(x.size, np.float32)
    y_in = buf[: y.size].reshape(y.shape)
    with pytest.raises(ValueError, match="'dx' overlaps"):
        _cpu.conv2d_backward(dy, x, w, buf.reshape(x.shape), dw, None, act="tanh", y=y_in)
    with pytest.raises(ValueError, match="'dw' overlaps"):
        _cpu.conv2d_backward(dy, x, w, None, buf[: w.size].reshape(w.shape), None, act="relu", y=y_in)
    with pytest.raises(ValueError, match="'db' overlaps"):
        _cpu.conv2d_backward(dy, x, w, None, dw, buf[:4], act="relu", y=y_in)


# ------------------------------------------------------------------------- odd shapes, every kernel
# K with tails of every kind for 16-lane (AVX-512) and 8-lane (AVX2) vectors, C = 1 (the first
# layer's segments of S values), 3, 7, 16; strides, dilation, both paddings, one image (row-block
# items, private dx copies at 2 threads) and three. On an AVX-512 machine K <= 8 (forward) and
# dx column groups narrower than 16 run the AVX2 kernels; K = 12, 17, 33, 64 and C = 7, 16 reach
# the AVX-512 ones.
ODD_GEOMETRY = [(1, 1, "same"), (2, 1, "valid"), (2, 1, "same"), (1, 2, "valid"), (1, 2, "same"),
                (2, 2, "same")]


def odd_case(rng, K, C, geo, N):
    stride, dil, padding = ODD_GEOMETRY[geo]
    return make_case(rng, N, 11, 9, C, K, 3, 3, stride, dil, padding)


def assert_backward_input_matches_ref(x, w, b, yshape, kw, rng, act="linear"):
    y = np.empty(yshape, np.float32)
    _cpu.ref.conv2d_forward(x, w, b, y, **kw, act=act)
    dy = rand(rng, *yshape)
    dx, dx_ref = np.full(x.shape, np.nan, np.float32), np.empty_like(x)
    _cpu.conv2d_backward_input(dy, w, dx, **kw, act=act, y=y)
    _cpu.ref.conv2d_backward_input(dy, w, dx_ref, **kw, act=act, y=y)
    R, S, C, K = w.shape
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-5, atol=8e-6 * max(1.0, np.sqrt(R * S * K)), err_msg="dx")


@pytest.mark.parametrize("N", [1, 3])
@pytest.mark.parametrize("geo", range(len(ODD_GEOMETRY)),
                         ids=[f"s{s}-d{d}-{p}" for s, d, p in ODD_GEOMETRY])
@pytest.mark.parametrize("C", [1, 3, 7, 16])
@pytest.mark.parametrize("K", [1, 5, 12, 17, 33, 64])
def test_odd_shapes_match_reference(K, C, geo, N, threads, rng):
    case = odd_case(rng, K, C, geo, N)
    for nthreads in (1, 2):
        _cpu.set_num_threads(nthreads)
        assert_matches_ref(*case, rng)
        assert_matches_ref(*case, rng, with_dx=False)
        assert_backward_input_matches_ref(*case, rng)
        act = ACTS[(K + C + geo) % 4]
        assert_fused_matches(*case, act, rng)
        assert_backward_input_matches_ref(*case, rng, act=act)


@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed")
@pytest.mark.parametrize("N", [1, 3])
@pytest.mark.parametrize("geo", range(len(ODD_GEOMETRY)),
                         ids=[f"s{s}-d{d}-{p}" for s, d, p in ODD_GEOMETRY])
@pytest.mark.parametrize("C", [1, 3, 7, 16])
@pytest.mark.parametrize("K", [1, 5, 12, 17, 33, 64])
def test_odd_shapes_match_torch(K, C, geo, N, rng):
    import torch
    x, w, b, yshape, kw = odd_case(rng, K, C, geo, N)
    (pt, pl), (st, _), (dl, _) = kw["padding"], kw["stride"], kw["dilation"]
    # 'same' here is symmetric (odd_case keeps only such shapes), so torch pads (pt, pl) on both sides
    tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous().requires_grad_(True)
    tb = torch.from_numpy(b).requires_grad_(True)
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=st, padding=(pt, pl), dilation=dl)
    y_t = ty.detach().permute(0, 2, 3, 1).numpy()
    assert y_t.shape == yshape
    dy = rand(rng, *yshape)
    ty.backward(torch.from_numpy(dy).permute(0, 3, 1, 2))
    y = np.empty(yshape, np.float32)
    _cpu.conv2d_forward(x, w, b, y, **kw)
    dx, dw, db = np.empty_like(x), np.zeros_like(w), np.zeros_like(b)
    _cpu.conv2d_backward(dy, x, w, dx, dw, db, **kw)
    dx2 = np.empty_like(x)
    _cpu.conv2d_backward_input(dy, w, dx2, **kw)
    np.testing.assert_allclose(y, y_t, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, tx.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(dx2, dx)   # the same kernel
    np.testing.assert_allclose(dw, tw.grad.permute(2, 3, 1, 0).numpy(), rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-4, atol=2e-4)


def test_deterministic_for_a_thread_count(threads, rng):
    # dw/db are summed per thread and then in thread order: repeated calls give the same bits
    x, w, b, yshape, kw = make_case(rng, 3, 28, 28, 16, 33, 3, 3, 1, 1, "same")
    dy = rand(rng, *yshape)
    for nthreads in (1, 2):
        _cpu.set_num_threads(nthreads)
        outs = []
        for _ in range(3):
            y = np.empty(yshape, np.float32)
            _cpu.conv2d_forward(x, w, b, y, **kw)
            dx, dw, db = np.empty_like(x), np.zeros_like(w), np.zeros_like(b)
            _cpu.conv2d_backward(dy, x, w, dx, dw, db, **kw)
            outs.append((y, dx, dw, db))
        for o in outs[1:]:
            for a, b_ in zip(outs[0], o):
                np.testing.assert_array_equal(a, b_)


# ------------------------------------------------------------------------- every dispatch path
_PATH_SCRIPT = r"""
import sys, numpy as np
sys.path.insert(0, {root!r} + "/tests")
from test_conv2d import ACTS, make_case, random_shapes, assert_fused_matches, assert_matches_ref
from kilnet import _cpu
rng = np.random.default_rng(7)
for nthreads in (1, 2):
    _cpu.set_num_threads(nthreads)
    for shape in random_shapes(99, 12):
        assert_matches_ref(*make_case(rng, **shape), rng)
    assert_matches_ref(*make_case(rng, 3, 13, 9, 16, 33, 3, 3, 2, 2, "same"), rng)
    for i, shape in enumerate(random_shapes(55, 8)):
        assert_fused_matches(*make_case(rng, **shape), ACTS[i % 4], rng)
    for act in ACTS:
        assert_fused_matches(*make_case(rng, 3, 13, 9, 16, 33, 3, 3, 2, 2, "same"), act, rng)
        assert_fused_matches(*make_case(rng, 4, 28, 28, 1, 32, 3, 3, 1, 1, "valid"), act, rng, with_dx=False)
print(_cpu.simd_level(), "ok")
"""


@pytest.mark.parametrize("env", [{"KILNET_SIMD": "scalar"}, {"KILNET_SIMD": "avx2"}, {"KILNET_CONV_PATH": "gemm"}],
                         ids=["scalar", "avx2", "general-path"])
def test_other_paths_match_reference(env):
    # the path is chosen once per process, so each one runs in a child process
    full_env = dict(os.environ, **env)
    # the child imports the same kilnet as this process (installed, or the in-place build)
    pkg_parent = os.path.dirname(os.path.dirname(_cpu.__file__))
    full_env["PYTHONPATH"] = os.pathsep.join([pkg_parent, full_env.get("PYTHONPATH", "")])
    res = subprocess.run([sys.executable, "-c", _PATH_SCRIPT.format(root=ROOT)], env=full_env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    if "KILNET_SIMD" in env and res.stdout.split()[0] != env["KILNET_SIMD"]:
        # KILNET_SIMD only lowers the level: avx2 on a machine without AVX2 runs scalar
        assert env["KILNET_SIMD"] == "avx2" and res.stdout.startswith("scalar")


# The AVX-512 kernels against the AVX2 ones on the same data: y, dx, dw, db of odd shapes from a
# child process at KILNET_SIMD=avx2 (the level is read once per process), compared here.
_AVX2_SCRIPT = r"""
import sys, numpy as np
sys.path.insert(0, {root!r} + "/tests")
from test_conv2d import ACTS, ODD_GEOMETRY, odd_case, make_case
from kilnet import _cpu
cases = [(K, C, geo, N) for K in (1, 5, 17, 33, 64) for C in (1, 3, 7, 32) for geo in range(len(ODD_GEOMETRY))
         for N in (1, 3)]
out = {{}}
for nthreads in (1, 2):
    _cpu.set_num_threads(nthreads)
    for i, (K, C, geo, N) in enumerate(cases):
        rng = np.random.default_rng(i)
        x, w, b, yshape, kw = odd_case(rng, K, C, geo, N)
        act = ACTS[i % 4]
        y = np.empty(yshape, np.float32)
        _cpu.conv2d_forward(x, w, b, y, **kw, act=act)
        dy = rng.standard_normal(yshape).astype(np.float32)
        dx, dw, db = np.empty_like(x), np.zeros_like(w), np.zeros_like(b)
        _cpu.conv2d_backward(dy, x, w, dx, dw, db, **kw, act=act, y=y)
        dx2 = np.empty_like(x)
        _cpu.conv2d_backward_input(dy, w, dx2, **kw, act=act, y=y)
        for name, a in (("y", y), ("dx", dx), ("dw", dw), ("db", db), ("dx2", dx2)):
            out[f"{{nthreads}}-{{i}}-{{name}}"] = a
np.savez(sys.argv[1], level=_cpu.simd_level(), **out)
"""


def test_avx2_level_matches_avx512(tmp_path):
    if _cpu.simd_level() != "avx512":
        pytest.skip("needs an AVX-512 machine (this one runs " + _cpu.simd_level() + ")")
    pkg_parent = os.path.dirname(os.path.dirname(_cpu.__file__))
    script = _AVX2_SCRIPT.format(root=ROOT)
    res = {}
    for level in ("avx2", "avx512"):
        env = dict(os.environ, KILNET_SIMD=level)
        env["PYTHONPATH"] = os.pathsep.join([pkg_parent, env.get("PYTHONPATH", "")])
        path = str(tmp_path / f"{level}.npz")
        r = subprocess.run([sys.executable, "-c", script, path], env=env, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        res[level] = np.load(path)
        assert str(res[level]["level"]) == level
    a, b = res["avx2"], res["avx512"]
    keys = [k for k in a.files if k != "level"]
    assert keys and sorted(keys) == sorted(k for k in b.files if k != "level")
    for k in keys:
        # y and dx sum R*S*C or R*S*K terms, dw and db whole batches: float32 rounding differs
        # only in the order of the sums
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=2e-5, err_msg=k)


# ------------------------------------------------------------------------- against PyTorch
@pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed")
@pytest.mark.parametrize("N,H,W,C,K,R,S,stride,dil,pad", [
    (4, 28, 28, 1, 32, 3, 3, 1, 1, 0),
    (3, 14, 14, 32, 64, 3, 3, 1, 1, 1),
    (2, 13, 11, 7, 17, 5, 3, 2, 1, 2),
    (2, 9, 9, 16, 33, 3, 3, 1, 2, 2),
    (1, 8, 10, 3, 5, 2, 2, 2, 1, 0),
])
def test_matches_torch(N, H, W, C, K, R, S, stride, dil, pad, rng):
    import torch
    x, w, b = rand(rng, N, H, W, C), rand(rng, R, S, C, K), rand(rng, K)
    tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)   # NHWC -> NCHW
    tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous().requires_grad_(True)   # RSCK -> KCRS
    tb = torch.from_numpy(b).requires_grad_(True)
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=stride, padding=pad, dilation=dil)
    y_t = ty.detach().permute(0, 2, 3, 1).numpy()
    dy = rand(rng, *y_t.shape)
    ty.backward(torch.from_numpy(dy).permute(0, 3, 1, 2))

    kw = dict(stride=(stride, stride), padding=(pad, pad), dilation=(dil, dil))
    y = np.empty(y_t.shape, np.float32)
    _cpu.conv2d_forward(x, w, b, y, **kw)
    dx, dw, db = np.empty_like(x), np.zeros_like(w), np.zeros_like(b)
    _cpu.conv2d_backward(dy, x, w, dx, dw, db, **kw)
    np.testing.assert_allclose(y, y_t, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, tx.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, tw.grad.permute(2, 3, 1, 0).numpy(), rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-4, atol=2e-4)


# ------------------------------------------------------------------------- finite differences
@pytest.mark.parametrize("stride,dil,pad", [(1, 1, (1, 1)), (2, 1, (1, 0)), (1, 2, (0, 2))])
def test_gradients_match_finite_differences(stride, dil, pad, rng):
    N, H, W, C, K, R, S = 2, 5, 6, 2, 3, 3, 2
    x, w, b = rand(rng, N, H, W, C), rand(rng, R, S, C, K), rand(rng, K)
    kw = dict(stride=(stride, stride), padding=pad, dilation=(dil, dil))
    P = (H + 2 * pad[0] - (R - 1) * dil - 1) // stride + 1
    Q = (W + 2 * pad[1] - (S - 1) * dil - 1) // stride + 1
    g = rand(rng, N, P, Q, K)          # loss = sum(y * g), so dL/dy = g
    y = np.empty((N, P, Q, K), np.float32)

    def loss():
        _cpu.conv2d_forward(x, w, b, y, **kw)
        return np.sum(y.astype(np.float64) * g)

    dx, dw, db = np.empty_like(x), np.zeros_like(w), np.zeros_like(b)
    _cpu.conv2d_backward(g, x, w, dx, dw, db, **kw)
    assert_grad_close(dx, numeric_grad(loss, x))
    assert_grad_close(dw, numeric_grad(loss, w))
    assert_grad_close(db, numeric_grad(loss, b))


# ------------------------------------------------------------------------- bad input
def _good(rng):
    x, w, b = rand(rng, 2, 7, 7, 3), rand(rng, 3, 3, 3, 4), rand(rng, 4)
    return x, w, b, np.empty((2, 5, 5, 4), np.float32)


def test_rejects_wrong_channel_count(rng):
    x, _, b, y = _good(rng)
    with pytest.raises(ValueError, match="input channels"):
        _cpu.conv2d_forward(x, rand(rng, 3, 3, 2, 4), b, y)


def test_rejects_wrong_output_shape(rng):
    x, w, b, _ = _good(rng)
    # P = 8 would need 3 rows of bottom padding: more than the top padding (0) or R - 1 (2)
    with pytest.raises(ValueError, match="output"):
        _cpu.conv2d_forward(x, w, b, np.empty((2, 8, 5, 4), np.float32))
    with pytest.raises(ValueError):
        _cpu.conv2d_forward(x, w, b, np.empty((2, 5, 5, 3), np.float32))
    with pytest.raises(ValueError, match="'dx'"):
        _cpu.conv2d_backward(np.zeros((2, 5, 5, 4), np.float32), x, w, np.empty((2, 7, 7, 2), np.float32),
                             np.zeros_like(w), None)


def test_rejects_float64(rng):
    x, w, b, y = _good(rng)
    with pytest.raises(TypeError, match="float32"):
        _cpu.conv2d_forward(x.astype(np.float64), w, b, y)
    with pytest.raises(TypeError, match="float32"):
        _cpu.conv2d_backward(y.astype(np.float64), x, w, None, np.zeros_like(w), None)


def test_rejects_non_contiguous(rng):
    x, w, b, y = _good(rng)
    with pytest.raises(ValueError, match="contiguous"):
        _cpu.conv2d_forward(np.asfortranarray(x), w, b, y)
    with pytest.raises(ValueError, match="contiguous"):
        _cpu.conv2d_forward(x, w, b, np.empty((2, 5, 5, 8), np.float32)[..., ::2])


def test_rejects_output_aliasing_input(rng):
    buf = rand(rng, 2 * 7 * 7 * 4)
    x = buf[: 2 * 7 * 7 * 3].reshape(2, 7, 7, 3)
    y = buf[: 2 * 5 * 5 * 4].reshape(2, 5, 5, 4)      # overlaps x
    w, b = rand(rng, 3, 3, 3, 4), rand(rng, 4)
    with pytest.raises(ValueError, match="overlap|alias"):
        _cpu.conv2d_forward(x, w, b, y)
    dy = rand(rng, 2, 5, 5, 4)
    with pytest.raises(ValueError, match="overlap|alias"):
        _cpu.conv2d_backward(dy, x, w, x, np.zeros_like(w), None)   # dx is x


# ------------------------------------------------------------------------- per example (DP-SGD)
@pytest.mark.parametrize("act", ["linear", "relu", "sigmoid"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("geo", [(7, 28, 28, 1, 32, 3, 3, 1, 1, "valid"), (5, 9, 11, 3, 16, 3, 3, 2, 1, "same"),
                                 (3, 10, 10, 2, 8, 3, 3, 1, 2, "same")])
def test_per_example_weight_grads(geo, nthreads, bias, act, threads, rng):
    """Row i of conv2d_backward_per_example = conv2d_backward of example i alone (the reference
    kernel on it), added onto what the row held."""
    _cpu.set_num_threads(nthreads)
    N, H, W, C, K, R, S, stride, dil, padding = geo
    x, w, b, yshape, kw = make_case(rng, N, H, W, C, K, R, S, stride, dil, padding)
    y = np.empty(yshape, np.float32)
    _cpu.conv2d_forward(x, w, b, y, act=act, **kw)
    dy = rand(rng, *yshape)
    kel = w.size
    start = rand(rng, N, kel + (K if bias else 0))
    for mod in (_cpu, _cpu.ref):
        per = start.copy()
        mod.conv2d_backward_per_example(dy, x, w, per, act=act, y=None if act == "linear" else y, **kw)
        for i in range(N):
            dw, db = np.zeros_like(w), np.zeros_like(b)
            _cpu.ref.conv2d_backward(dy[i:i + 1], x[i:i + 1], w, None, dw, db if bias else None, act=act,
                                     y=None if act == "linear" else y[i:i + 1], **kw)
            want = np.concatenate([dw.ravel(), db]) if bias else dw.ravel()
            np.testing.assert_allclose(per[i] - start[i], want, rtol=2e-4, atol=2e-4 * np.abs(want).max())


def test_per_example_bad_arguments(rng):
    x, w, b, yshape, kw = make_case(rng, 4, 8, 8, 1, 16, 3, 3, 1, 1, "valid")
    dy = rand(rng, *yshape)
    with pytest.raises(ValueError, match=r"per must have shape \(4, 144\) or \(4, 160\)"):
        _cpu.conv2d_backward_per_example(dy, x, w, np.zeros((4, 150), np.float32), **kw)
    with pytest.raises(ValueError, match="needs 'y'"):
        _cpu.conv2d_backward_per_example(dy, x, w, np.zeros((4, 144), np.float32), act="relu", **kw)
    with pytest.raises((TypeError, ValueError), match="float32"):
        _cpu.conv2d_backward_per_example(dy, x, w, np.zeros((4, 144), np.float64), **kw)
    with pytest.raises(ValueError, match="per"):
        _cpu.conv2d_backward_per_example(dy, x, w, dy.reshape(4, -1)[:, :144], **kw)
