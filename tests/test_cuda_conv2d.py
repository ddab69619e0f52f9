"""kilnet._cuda conv2d_forward / conv2d_backward (implicit GEMM) against the CPU reference
(kilnet._cpu.ref) on random odd shapes: every geometry (stride, padding, dilation), every fused
activation, all three gradients, dx=None / db=None, accumulation into dw and db, NaN-poisoned
outputs, the vectorized and the scalar gather paths, the tiny-reduction forward kernel, and the
argument errors."""
import numpy as np
import pytest

from conftest import rand
from kilnet import _cpu
from test_conv2d import geometry   # Keras's output size and padding per axis

pytestmark = pytest.mark.cuda

ACTS = ("linear", "relu", "sigmoid", "tanh")


def make_case(rng, N, H, W, C, K, R, S, stride, dil, padding):
    gh, gw = geometry(H, R, stride, dil, padding), geometry(W, S, stride, dil, padding)
    if gh is None or gw is None:
        return None
    (P, top, _), (Q, left, _) = gh, gw
    x, w, b = rand(rng, N, H, W, C), rand(rng, R, S, C, K), rand(rng, K)
    kw = dict(stride=(stride, stride), padding=(top, left), dilation=(dil, dil))
    return x, w, b, (N, P, Q, K), kw


def tol(red):
    """float32 tolerance for a sum of `red` products of values in [-1, 1]."""
    return dict(rtol=1e-4 * max(1.0, np.sqrt(red)), atol=2e-5 * max(1.0, red ** 0.75))


def check_case(gpu, rng, x, w, b, yshape, kw, act="linear", with_dx=True, with_db=True, with_b=True):
    k = gpu.k
    R, S, C, K = w.shape
    bb = b if with_b else None
    # forward
    y_ref = np.empty(yshape, np.float32)
    _cpu.ref.conv2d_forward(x, w, bb, y_ref, **kw, act=act)
    y = gpu.poisoned(yshape)
    k.conv2d_forward(gpu.dev(x), gpu.dev(w), gpu.dev(bb), y, **kw, act=act)
    np.testing.assert_allclose(gpu.host(y), y_ref, **tol(R * S * C))
    # backward, dw/db accumulate onto non-zero values, dx overwritten (poisoned)
    dy = rand(rng, *yshape)
    dw0, db0 = rand(rng, *w.shape), rand(rng, K)
    dx_r = np.empty(x.shape, np.float32) if with_dx else None
    dw_r, db_r = dw0.copy(), (db0.copy() if with_db else None)
    yarg = dict(act=act, y=y_ref) if act != "linear" else dict(act=act)
    _cpu.ref.conv2d_backward(dy, x, w, dx_r, dw_r, db_r, **kw, **yarg)
    dx = gpu.poisoned(x.shape) if with_dx else None
    dw, db = gpu.dev(dw0), (gpu.dev(db0) if with_db else None)
    ydev = dict(act=act, y=gpu.dev(y_ref)) if act != "linear" else dict(act=act)
    k.conv2d_backward(gpu.dev(dy), gpu.dev(x), gpu.dev(w), dx, dw, db, **kw, **ydev)
    P, Q = yshape[1], yshape[2]
    if with_dx:
        np.testing.assert_allclose(gpu.host(dx), dx_r, **tol(R * S * K))
    np.testing.assert_allclose(gpu.host(dw), dw_r, **tol(x.shape[0] * P * Q))
    if with_db:
        np.testing.assert_allclose(gpu.host(db), db_r, **tol(x.shape[0] * P * Q))


def random_shapes(count, seed):
    r = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        N = int(r.integers(1, 4))
        H, W = int(r.integers(5, 14)), int(r.integers(5, 14))
        C = int(r.choice([1, 3, 5, 4, 8]))
        K = int(r.choice([1, 7, 16, 33, 4]))
        R, S = int(r.choice([1, 2, 3, 5])), int(r.choice([1, 2, 3, 5]))
        stride = int(r.choice([1, 2]))
        dil = int(r.choice([1, 2]))
        pad = str(r.choice(["valid", "same"]))
        act = str(r.choice(ACTS))
        out.append((N, H, W, C, K, R, S, stride, dil, pad, act))
    return out


@pytest.mark.parametrize("i,shape", list(enumerate(random_shapes(40, 7))))
def test_random_shapes_match_reference(gpu, i, shape):
    rng = np.random.default_rng(1000 + i)
    N, H, W, C, K, R, S, stride, dil, pad, act = shape
    case = make_case(rng, N, H, W, C, K, R, S, stride, dil, pad)
    if case is None:
        pytest.skip("no output for this geometry")
    check_case(gpu, rng, *case, act=act)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("C,K", [(1, 32), (3, 16), (4, 33), (8, 64), (16, 7), (33, 65), (64, 128),
                                 (12, 130), (16, 40), (5, 12), (8, 9)])
def test_every_tile_config_and_activation(gpu, rng, act, C, K):
    # covers the tiny-reduction forward kernel (R*S*C <= 32) and each GEMM tile (K and C
    # below/above 32, 64), with both the float4 (C, K % 4 == 0) and the scalar gathers.
    case = make_case(rng, 2, 9, 11, C, K, 3, 3, 1, 1, "same")
    check_case(gpu, rng, *case, act=act)


@pytest.mark.parametrize("stride,dil,pad", [(1, 1, "valid"), (2, 1, "same"), (1, 2, "same"),
                                            (2, 2, "valid"), (3, 1, "same")])
@pytest.mark.parametrize("C,K", [(4, 8), (5, 7)])
def test_geometry(gpu, rng, stride, dil, pad, C, K):
    case = make_case(rng, 3, 13, 10, C, K, 3, 2, stride, dil, pad)
    check_case(gpu, rng, *case, act="relu")


def test_explicit_padding_larger_than_window(gpu, rng):
    x, w, b = rand(rng, 2, 5, 6, 4), rand(rng, 3, 3, 4, 8), rand(rng, 8)
    kw = dict(stride=(1, 1), padding=(3, 4), dilation=(1, 1))
    check_case(gpu, rng, x, w, b, (2, 9, 11, 8), kw, act="tanh")


def test_first_layer_without_dx(gpu, rng):
    # the canonical first layer: 28x28x1 -> 32 filters 3x3 valid relu, dx skipped
    case = make_case(rng, 3, 28, 28, 1, 32, 3, 3, 1, 1, "valid")
    check_case(gpu, rng, *case, act="relu", with_dx=False)


def test_no_bias_no_db(gpu, rng):
    case = make_case(rng, 2, 7, 9, 8, 16, 3, 3, 1, 1, "same")
    check_case(gpu, rng, *case, act="sigmoid", with_db=False, with_b=False)
    case = make_case(rng, 2, 7, 9, 3, 5, 3, 3, 1, 1, "same")
    check_case(gpu, rng, *case, with_db=False, with_b=False, with_dx=False)


def test_long_reduction_split(gpu, rng):
    # many output pixels: the weight gradient is split over pixels; dw/db must still match
    case = make_case(rng, 8, 33, 31, 16, 48, 3, 3, 1, 1, "same")
    check_case(gpu, rng, *case, act="relu")


def test_unaligned_views_take_the_scalar_path(gpu, rng):
    # C, K % 4 == 0 but the arrays start 4 bytes into a buffer: no float4 loads allowed
    cp, k = gpu.cp, gpu.k
    x, w, b = rand(rng, 2, 7, 7, 4), rand(rng, 3, 3, 4, 8), rand(rng, 8)
    kw = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1))

    def shifted(a):
        buf = cp.empty(a.size + 1, cp.float32)
        v = buf[1:].reshape(a.shape)
        v[...] = cp.asarray(a)
        return v
    y_ref = np.empty((2, 7, 7, 8), np.float32)
    _cpu.ref.conv2d_forward(x, w, b, y_ref, **kw)
    y = shifted(np.full(y_ref.shape, np.nan, np.float32))
    k.conv2d_forward(shifted(x), shifted(w), gpu.dev(b), y, **kw)
    np.testing.assert_allclose(gpu.host(y), y_ref, **tol(36))
    dy = rand(rng, *y_ref.shape)
    dx_r, dw_r, db_r = np.empty_like(x), np.zeros_like(w), np.zeros_like(b)
    _cpu.ref.conv2d_backward(dy, x, w, dx_r, dw_r, db_r, **kw)
    dx, dw, db = shifted(np.full(x.shape, np.nan, np.float32)), shifted(np.zeros_like(w)), gpu.dev(np.zeros_like(b))
    k.conv2d_backward(shifted(dy), shifted(x), shifted(w), dx, dw, db, **kw)
    np.testing.assert_allclose(gpu.host(dx), dx_r, **tol(72))
    np.testing.assert_allclose(gpu.host(dw), dw_r, **tol(98))
    np.testing.assert_allclose(gpu.host(db), db_r, **tol(98))


def test_deterministic(gpu, rng):
    k = gpu.k
    case = make_case(rng, 4, 20, 20, 8, 16, 3, 3, 1, 1, "same")
    x, w, b, yshape, kw = case
    dy = gpu.dev(rand(rng, *yshape))
    outs = []
    for _ in range(2):
        dx, dw, db = gpu.poisoned(x.shape), gpu.cp.zeros(w.shape, gpu.cp.float32), gpu.cp.zeros(w.shape[3], gpu.cp.float32)
        k.conv2d_backward(dy, gpu.dev(x), gpu.dev(w), dx, dw, db, **kw)
        outs.append((gpu.host(dx), gpu.host(dw), gpu.host(db)))
    for a, c in zip(*outs):
        np.testing.assert_array_equal(a, c)


def test_stream_argument(gpu, rng):
    cp, k = gpu.cp, gpu.k
    case = make_case(rng, 2, 8, 8, 4, 8, 3, 3, 1, 1, "same")
    x, w, b, yshape, kw = case
    y_ref = np.empty(yshape, np.float32)
    _cpu.ref.conv2d_forward(x, w, b, y_ref, **kw)
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        xd, wd, bd, y = gpu.dev(x), gpu.dev(w), gpu.dev(b), gpu.poisoned(yshape)
    s.synchronize()
    k.conv2d_forward(xd, wd, bd, y, **kw, stream=s)
    s.synchronize()
    np.testing.assert_allclose(cp.asnumpy(y), y_ref, **tol(36))


def test_bad_arguments(gpu, rng):
    cp, k = gpu.cp, gpu.k
    x, w, b = gpu.dev(rand(rng, 2, 6, 6, 3)), gpu.dev(rand(rng, 3, 3, 3, 4)), gpu.dev(rand(rng, 4))
    y = cp.empty((2, 4, 4, 4), cp.float32)
    dw, db = cp.zeros((3, 3, 3, 4), cp.float32), cp.zeros(4, cp.float32)
    with pytest.raises(TypeError, match="CuPy"):
        k.conv2d_forward(cp.asnumpy(x), w, b, y)
    with pytest.raises(TypeError, match="CuPy"):
        k.conv2d_backward(cp.asnumpy(y), x, w, None, dw, db)
    with pytest.raises(TypeError):
        k.conv2d_forward(x.astype(cp.float64), w, b, y)
    with pytest.raises(ValueError):
        k.conv2d_forward(x, w, b, cp.empty((2, 4, 4, 5), cp.float32))          # K mismatch
    with pytest.raises(ValueError):
        k.conv2d_forward(x, gpu.dev(rand(rng, 3, 3, 2, 4)), b, y)              # C mismatch
    with pytest.raises(ValueError):
        k.conv2d_forward(x, w, cp.zeros(5, cp.float32), y)                     # bias shape
    with pytest.raises(ValueError):
        k.conv2d_forward(x[:, :, ::2], w, b, cp.empty((2, 4, 1, 4), cp.float32))  # non-contiguous
    with pytest.raises(ValueError):
        k.conv2d_forward(x, w, b, y, stride=(0, 1))
    with pytest.raises(ValueError):
        k.conv2d_forward(x, w, b, y, act="softmax")
    with pytest.raises(ValueError):
        k.conv2d_backward(y, x, w, None, dw, db, act="relu")                   # relu needs y
    with pytest.raises(ValueError):
        k.conv2d_backward(y, x, w, cp.empty((2, 6, 6, 4), cp.float32), dw, db)  # dx shape
    with pytest.raises(ValueError):
        k.conv2d_backward(y, x, w, None, cp.zeros((3, 3, 3, 5), cp.float32), db)  # dw shape
    with pytest.raises(ValueError):
        k.conv2d_backward(y, x, w, None, dw, cp.zeros(3, cp.float32))          # db shape
    with pytest.raises(ValueError):
        k.conv2d_forward(x, w, b, x[:, :4, :4, :3].copy().reshape(2, 4, 4, 3))  # K mismatch
    with pytest.raises(ValueError):
        k.conv2d_backward(y, x, w, x, dw, db)                                  # dx aliases x


@pytest.mark.parametrize("C,K,act", [(4, 8, "relu"), (5, 7, "tanh"), (32, 64, "linear"),
                                     (64, 128, "sigmoid"), (1, 32, "relu"), (33, 40, "linear")])
def test_tf32_tensor_cores(gpu, rng, C, K, act):
    # set_tf32(True) switches the GEMM tiles to TF32 WMMA: inputs rounded to 10 mantissa bits,
    # so the tolerance is ~1e-3 relative to the size of the sums.
    k = gpu.k
    x, w, b, yshape, kw = make_case(rng, 2, 11, 9, C, K, 3, 3, 1, 1, "same")
    red = 9 * max(C, K)
    dy = rand(rng, *yshape)
    y_ref = np.empty(yshape, np.float32)
    _cpu.ref.conv2d_forward(x, w, b, y_ref, **kw, act=act)
    dx_r, dw_r, db_r = np.empty_like(x), np.zeros_like(w), np.zeros_like(b)
    yarg = dict(act=act, y=y_ref) if act != "linear" else {}
    _cpu.ref.conv2d_backward(dy, x, w, dx_r, dw_r, db_r, **kw, **yarg)
    k.set_tf32(True)
    try:
        y = gpu.poisoned(yshape)
        k.conv2d_forward(gpu.dev(x), gpu.dev(w), gpu.dev(b), y, **kw, act=act)
        dx, dw, db = gpu.poisoned(x.shape), gpu.cp.zeros(w.shape, gpu.cp.float32), gpu.cp.zeros(K, gpu.cp.float32)
        ydev = dict(act=act, y=gpu.dev(y_ref)) if act != "linear" else {}
        k.conv2d_backward(gpu.dev(dy), gpu.dev(x), gpu.dev(w), dx, dw, db, **kw, **ydev)
    finally:
        k.set_tf32(False)
    for got, want in ((y, y_ref), (dx, dx_r), (dw, dw_r), (db, db_r)):
        want_scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(gpu.host(got), want, rtol=5e-3, atol=3e-3 * want_scale * np.sqrt(red) / 3)
