"""CUDA pooling kernels (kilnet._cuda) against the CPU: max / average / global average pooling,
forward and backward, NHWC. The GPU kernels follow the CPU fast path's exact order of
comparisons and additions, so they must agree with kilnet._cpu bit for bit (and with
kilnet._cpu.ref to float32 rounding): odd sizes, 'same' padding, overlapping windows (the
backward gathers, no atomics), ties (the first maximum wins), NaN propagation, outputs poisoned
with NaN first, a non-default stream, and bad arguments."""
import numpy as np
import pytest

from kilnet import _cpu

pytestmark = pytest.mark.cuda

# (N, H, W, C, pool, strides, padding)
GEOMS = [(1, 4, 4, 3, (2, 2), (2, 2), "valid"), (3, 7, 9, 5, (2, 2), (2, 2), "same"),
         (2, 7, 7, 2, (3, 3), (2, 2), "same"), (3, 6, 5, 3, (3, 2), (1, 1), "valid"),
         (1, 6, 5, 3, (3, 3), (1, 2), "same"), (2, 5, 8, 17, (2, 3), (3, 2), "same"),
         (1, 1, 1, 4, (1, 1), (1, 1), "valid"), (3, 9, 3, 33, (4, 3), (2, 1), "same"),
         (2, 13, 11, 65, (3, 3), (1, 1), "same"), (1, 17, 17, 129, (5, 4), (2, 3), "valid"),
         # C % 4 == 0: the float4 path (4 channels per thread)
         (3, 7, 9, 8, (2, 2), (2, 2), "same"), (2, 9, 7, 32, (3, 3), (1, 1), "same"),
         (2, 28, 28, 32, (2, 2), (2, 2), "valid"), (1, 6, 11, 12, (3, 2), (2, 3), "same")]


def out_len(n, k, s, padding):
    """Keras output length and top/left padding."""
    if padding == "valid":
        return (n - k) // s + 1, 0
    p = -(-n // s)
    return p, max((p - 1) * s + k - n, 0) // 2


def geometry(h, w, pool, strides, padding):
    (p, ph), (q, pw) = out_len(h, pool[0], strides[0], padding), out_len(w, pool[1], strides[1], padding)
    return (p, q), (ph, pw)


def cpu_pool(K, kind, x, dy, pool, strides, pad):
    n, h, w, c = x.shape
    y = np.full((n, dy.shape[1], dy.shape[2], c), np.nan, np.float32)
    dx = np.full(x.shape, np.nan, np.float32)
    if kind == "max":
        K.maxpool2d_forward(x, y, pool, strides, pad)
        K.maxpool2d_backward(x, dy, dx, pool, strides, pad)
    else:
        K.avgpool2d_forward(x, y, pool, strides, pad)
        K.avgpool2d_backward(dy, dx, pool, strides, pad)
    return y, dx


def gpu_pool(gpu, kind, x, dy, pool, strides, pad, stream=None):
    n, h, w, c = x.shape
    xd, dyd = gpu.dev(x), gpu.dev(dy)
    y = gpu.poisoned((n, dy.shape[1], dy.shape[2], c))
    dx = gpu.poisoned(x.shape)
    if stream is not None:   # the copies and the NaN fill ran on the current stream
        gpu.cp.cuda.get_current_stream().synchronize()
    if kind == "max":
        gpu.k.maxpool2d_forward(xd, y, pool, strides, pad, stream=stream)
        gpu.k.maxpool2d_backward(xd, dyd, dx, pool, strides, pad, stream=stream)
    else:
        gpu.k.avgpool2d_forward(xd, y, pool, strides, pad, stream=stream)
        gpu.k.avgpool2d_backward(dyd, dx, pool, strides, pad, stream=stream)
    if stream is not None:
        stream.synchronize()
    return gpu.host(y), gpu.host(dx)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("n,h,w,c,pool,strides,padding", GEOMS)
def test_pool_matches_cpu(gpu, kind, n, h, w, c, pool, strides, padding):
    r = np.random.default_rng(h * 100 + w * 10 + c)
    x = r.uniform(-1, 1, (n, h, w, c)).astype(np.float32)
    if kind == "max":   # many exact ties: the first maximum must win on the GPU too
        x = np.round(x * 2).astype(np.float32)
    out, pad = geometry(h, w, pool, strides, padding)
    dy = r.uniform(-1, 1, (n, *out, c)).astype(np.float32)
    y_g, dx_g = gpu_pool(gpu, kind, x, dy, pool, strides, pad)
    y_c, dx_c = cpu_pool(_cpu, kind, x, dy, pool, strides, pad)
    np.testing.assert_array_equal(y_g, y_c)     # same operations in the same order
    np.testing.assert_array_equal(dx_g, dx_c)
    y_r, dx_r = cpu_pool(_cpu.ref, kind, x, dy, pool, strides, pad)
    np.testing.assert_allclose(y_g, y_r, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx_g, dx_r, rtol=1e-5, atol=1e-6)


def test_maxpool_ties_and_nan(gpu):
    # all-equal windows: the gradient goes to each window's first position only
    x = np.ones((1, 4, 4, 2), np.float32)
    dy = np.arange(1, 9, dtype=np.float32).reshape(1, 2, 2, 2)
    y, dx = gpu_pool(gpu, "max", x, dy, (2, 2), (2, 2), (0, 0))
    expect = np.zeros_like(x)
    expect[0, ::2, ::2] = dy[0]
    np.testing.assert_array_equal(dx, expect)
    # overlapping windows (stride 1) with ties and a NaN: identical to the CPU
    x = np.zeros((2, 6, 7, 3), np.float32)
    x[0, 2, 3, 1] = np.nan
    x[1, 1, 1, :] = 1.0
    x[1, 4, 5, :] = 1.0
    dy = np.random.default_rng(1).uniform(-1, 1, (2, 4, 5, 3)).astype(np.float32)
    y_g, dx_g = gpu_pool(gpu, "max", x, dy, (3, 3), (1, 1), (0, 0))
    y_c, dx_c = cpu_pool(_cpu, "max", x, dy, (3, 3), (1, 1), (0, 0))
    assert np.isnan(y_g[0, 0:3, 1:4, 1]).all()
    np.testing.assert_array_equal(y_g, y_c)
    np.testing.assert_array_equal(dx_g, dx_c)


def test_pool_misaligned_views_use_the_scalar_path(gpu):
    """C % 4 == 0 but the arrays start 4 bytes into a buffer: no float4 access, same results."""
    r = np.random.default_rng(8)
    x = np.round(r.uniform(-2, 2, (2, 7, 6, 8))).astype(np.float32)
    dy = r.uniform(-1, 1, (2, 4, 3, 8)).astype(np.float32)
    cp, k = gpu.cp, gpu.k

    def view(a):
        buf = cp.full(a.size + 1, np.nan, cp.float32)
        v = buf[1:].reshape(a.shape)
        v[...] = cp.asarray(a)
        return v

    for kind in ("max", "avg"):
        y, dx = view(np.full((2, 4, 3, 8), np.nan, np.float32)), view(np.full(x.shape, np.nan, np.float32))
        xd, dyd = view(x), view(dy)
        if kind == "max":
            k.maxpool2d_forward(xd, y, (2, 2), (2, 2), (1, 0))
            k.maxpool2d_backward(xd, dyd, dx, (2, 2), (2, 2), (1, 0))
        else:
            k.avgpool2d_forward(xd, y, (2, 2), (2, 2), (1, 0))
            k.avgpool2d_backward(dyd, dx, (2, 2), (2, 2), (1, 0))
        y_c, dx_c = cpu_pool(_cpu, kind, x, dy, (2, 2), (2, 2), (1, 0))
        np.testing.assert_array_equal(gpu.host(y), y_c)
        np.testing.assert_array_equal(gpu.host(dx), dx_c)


def test_pool_on_a_stream(gpu):
    r = np.random.default_rng(5)
    x = r.uniform(-1, 1, (3, 9, 8, 7)).astype(np.float32)
    dy = r.uniform(-1, 1, (3, 5, 4, 7)).astype(np.float32)
    s = gpu.cp.cuda.Stream(non_blocking=True)
    for kind in ("max", "avg"):
        y_g, dx_g = gpu_pool(gpu, kind, x, dy, (2, 2), (2, 2), (1, 0), stream=s)
        y_c, dx_c = cpu_pool(_cpu, kind, x, dy, (2, 2), (2, 2), (1, 0))
        np.testing.assert_array_equal(y_g, y_c)
        np.testing.assert_array_equal(dx_g, dx_c)


@pytest.mark.parametrize("n,h,w,c", [(1, 1, 1, 1), (3, 5, 7, 3), (2, 7, 7, 33), (4, 13, 3, 129)])
def test_global_avgpool_matches_cpu(gpu, n, h, w, c):
    r = np.random.default_rng(n + h + c)
    x = r.uniform(-1, 1, (n, h, w, c)).astype(np.float32)
    dy = r.uniform(-1, 1, (n, c)).astype(np.float32)
    y = gpu.poisoned((n, c))
    dx = gpu.poisoned(x.shape)
    gpu.k.global_avgpool2d_forward(gpu.dev(x), y)
    gpu.k.global_avgpool2d_backward(gpu.dev(dy), dx)
    y_c, dx_c = np.empty((n, c), np.float32), np.empty_like(x)
    _cpu.global_avgpool2d_forward(x, y_c)
    _cpu.global_avgpool2d_backward(dy, dx_c)
    np.testing.assert_array_equal(gpu.host(y), y_c)
    np.testing.assert_array_equal(gpu.host(dx), dx_c)
    y_r = np.empty((n, c), np.float32)
    _cpu.ref.global_avgpool2d_forward(x, y_r)
    np.testing.assert_allclose(gpu.host(y), y_r, rtol=1e-5, atol=1e-6)


def test_pool_bad_input(gpu):
    cp, k = gpu.cp, gpu.k
    x = cp.zeros((2, 5, 5, 3), cp.float32)
    y = cp.zeros((2, 2, 2, 3), cp.float32)
    with pytest.raises(TypeError, match="CuPy"):
        k.maxpool2d_forward(np.zeros((2, 5, 5, 3), np.float32), y, (2, 2), (2, 2))
    with pytest.raises(TypeError, match="CuPy"):
        k.avgpool2d_backward(y, np.zeros((2, 5, 5, 3), np.float32), (2, 2), (2, 2))
    with pytest.raises(TypeError, match="float32"):
        k.maxpool2d_forward(x.astype(cp.float64), y, (2, 2), (2, 2))
    with pytest.raises(ValueError, match="4-D"):
        k.maxpool2d_forward(x[0], y, (2, 2), (2, 2))
    with pytest.raises(ValueError, match="output must have shape"):
        k.maxpool2d_forward(x, cp.zeros((2, 4, 2, 3), cp.float32), (2, 2), (2, 2))
    with pytest.raises(ValueError, match="padding"):
        k.maxpool2d_forward(x, y, (2, 2), (2, 2), (2, 0))
    with pytest.raises(ValueError, match="strides"):
        k.avgpool2d_forward(x, y, (2, 2), (0, 2))
    with pytest.raises(ValueError, match="contiguous"):
        k.maxpool2d_forward(cp.zeros((2, 5, 10, 3), cp.float32)[:, :, ::2], y, (2, 2), (2, 2))
    with pytest.raises(ValueError, match="overlaps"):
        k.maxpool2d_backward(x, y, x, (2, 2), (2, 2))
    with pytest.raises(ValueError, match="dx"):
        k.maxpool2d_backward(x, y, cp.zeros((2, 5, 4, 3), cp.float32), (2, 2), (2, 2))
    with pytest.raises(ValueError, match="shape"):
        k.global_avgpool2d_forward(x, cp.zeros((2, 4), cp.float32))
    with pytest.raises(ValueError, match="shape"):
        k.global_avgpool2d_backward(cp.zeros((3, 3), cp.float32), x)
