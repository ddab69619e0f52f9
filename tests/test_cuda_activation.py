"""kilnet._cuda activations and softmax against the CPU reference (kilnet._cpu.ref).

Elementwise: every activation, odd sizes (the float4 path and its scalar tail), misaligned views
(the scalar path), in place. Softmax: a warp per row up to 1024 columns, a block per row above:
shapes on both sides of each switch, many short rows and a few long ones. Outputs start as NaN
so an element the kernel forgot shows up. Argument errors as on the CPU, plus CuPy-only ones."""
import numpy as np
import pytest

from kilnet import _cpu

pytestmark = pytest.mark.cuda

ACTS = ["linear", "relu", "sigmoid", "tanh"]
SIZES = [1, 3, 4, 17, 33, 65, 129, 1000, 100003]
# Warp path (row in registers): 1, 2, 4, 8, 16, 32 values per lane; block path above 1024.
SOFTMAX_SHAPES = [(1, 1), (3, 7), (33, 10), (17, 33), (9, 100), (7, 200), (5, 500), (5, 1024),
                  (5, 1025), (3, 4096), (4, 4097), (2, 50000), (20000, 10), (2, 3, 5), (129, 1000)]


def data(shape, seed=0, scale=3.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def ref_act(act, x):
    y = np.empty_like(x)
    _cpu.ref.activation_forward(act, x, y)
    return y


def ref_act_bwd(act, y, dy):
    dx = np.empty_like(y)
    _cpu.ref.activation_backward(act, y, dy, dx)
    return dx


def assert_bwd_close(dx, dx_ref, dy):
    """tanh' = 1 - y*y cancels near |y| = 1, and the GPU forms it with one FMA (more exact than
    the CPU's rounded y*y): the difference is an ulp of y*y times dy, not relative to dx."""
    np.testing.assert_allclose(dx, dx_ref, rtol=2e-6, atol=2e-7 * max(1.0, float(np.abs(dy).max())))


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("n", SIZES)
def test_activation_matches_ref(gpu, act, n):
    x = data(n, seed=n)
    x[: min(n, 3)] = [0.0, -0.0, 50.0][: min(n, 3)]
    y = gpu.poisoned(n)
    gpu.k.activation_forward(act, gpu.dev(x), y)
    y_ref = ref_act(act, x)
    np.testing.assert_allclose(gpu.host(y), y_ref, rtol=2e-6, atol=1e-7)
    dy = data(n, seed=n + 1)
    dx = gpu.poisoned(n)
    gpu.k.activation_backward(act, gpu.dev(y_ref), gpu.dev(dy), dx)
    assert_bwd_close(gpu.host(dx), ref_act_bwd(act, y_ref, dy), dy)


@pytest.mark.parametrize("act", ACTS)
def test_activation_misaligned_views_and_in_place(gpu, act):
    n = 1001
    x = data(n + 1, seed=5)
    xd = gpu.dev(x)
    y = gpu.poisoned(n + 1)
    gpu.k.activation_forward(act, xd[1:], y[1:])           # not 16-byte aligned: scalar path
    np.testing.assert_allclose(gpu.host(y)[1:], ref_act(act, x[1:]), rtol=2e-6, atol=1e-7)
    assert np.isnan(gpu.host(y)[0])                        # nothing written outside the view
    z = gpu.dev(x)
    gpu.k.activation_forward(act, z, z)                    # in place
    np.testing.assert_allclose(gpu.host(z), ref_act(act, x), rtol=2e-6, atol=1e-7)
    yr = ref_act(act, x)
    dy = data(n + 1, seed=6)
    d = gpu.dev(dy)
    gpu.k.activation_backward(act, gpu.dev(yr), d, d)      # dx is dy
    assert_bwd_close(gpu.host(d), ref_act_bwd(act, yr, dy), dy)


def test_activation_special_values(gpu):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 100.0, -100.0, 1e-30], np.float32)
    for act in ACTS:
        y = gpu.poisoned(x.size)
        gpu.k.activation_forward(act, gpu.dev(x), y)
        # NaN where the CPU has NaN, infinities and zeros exactly; sigmoid(-100) is subnormal
        np.testing.assert_allclose(gpu.host(y), ref_act(act, x), rtol=2e-6, atol=1e-40)


def test_activation_any_rank_and_empty(gpu):
    x = data((2, 3, 5, 7), seed=3)
    y = gpu.poisoned(x.shape)
    gpu.k.activation_forward("tanh", gpu.dev(x), y)
    np.testing.assert_allclose(gpu.host(y), ref_act("tanh", x), rtol=2e-6, atol=1e-7)
    e = gpu.cp.empty((0, 4), np.float32)
    gpu.k.activation_forward("relu", e, gpu.cp.empty((0, 4), np.float32))


@pytest.mark.parametrize("shape", SOFTMAX_SHAPES)
def test_softmax_matches_ref(gpu, shape):
    x = data(shape, seed=sum(shape), scale=5.0)
    if x.size > 2:
        x.reshape(-1)[1] = 80.0        # a large logit: the max must be subtracted
    y = gpu.poisoned(shape)
    gpu.k.softmax_forward(gpu.dev(x), y)
    y_ref = np.empty_like(x)
    _cpu.ref.softmax_forward(x, y_ref)
    np.testing.assert_allclose(gpu.host(y), y_ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gpu.host(y).sum(axis=-1), 1.0, rtol=1e-4)
    dy = data(shape, seed=sum(shape) + 1)
    dx = gpu.poisoned(shape)
    gpu.k.softmax_backward(gpu.dev(y_ref), gpu.dev(dy), dx)
    dx_ref = np.empty_like(x)
    _cpu.ref.softmax_backward(y_ref, dy, dx_ref)
    scale = np.abs(dy).max()
    np.testing.assert_allclose(gpu.host(dx), dx_ref, rtol=1e-4, atol=1e-6 * scale)


@pytest.mark.parametrize("shape", [(7, 33), (3, 5000)])
def test_softmax_in_place(gpu, shape):
    x = data(shape, seed=11)
    y_ref = np.empty_like(x)
    _cpu.ref.softmax_forward(x, y_ref)
    z = gpu.dev(x)
    gpu.k.softmax_forward(z, z)
    np.testing.assert_allclose(gpu.host(z), y_ref, rtol=1e-5, atol=1e-7)
    dy = data(shape, seed=12)
    dx_ref = np.empty_like(x)
    _cpu.ref.softmax_backward(y_ref, dy, dx_ref)
    d = gpu.dev(dy)
    gpu.k.softmax_backward(gpu.dev(y_ref), d, d)
    np.testing.assert_allclose(gpu.host(d), dx_ref, rtol=1e-4, atol=1e-6 * np.abs(dy).max())


def test_softmax_masked_logits(gpu):
    x = np.array([[-np.inf, 0.0, 1.0, -np.inf], [3.0, -np.inf, -np.inf, -np.inf]], np.float32)
    y = gpu.poisoned(x.shape)
    gpu.k.softmax_forward(gpu.dev(x), y)
    y_ref = np.empty_like(x)
    _cpu.softmax_forward(x, y_ref)
    np.testing.assert_allclose(gpu.host(y), y_ref, rtol=1e-6)


def test_stream_argument(gpu):
    x = data(1000, seed=1)
    s = gpu.cp.cuda.Stream(non_blocking=True)
    y = gpu.poisoned(1000)
    y2 = gpu.poisoned((10, 100))
    xd = gpu.dev(x)
    gpu.cp.cuda.Device().synchronize()    # the NaN fills ran on another stream
    gpu.k.activation_forward("relu", xd, y, stream=s)
    s.synchronize()
    np.testing.assert_array_equal(gpu.host(y), ref_act("relu", x))
    with s:   # None: CuPy's current stream
        gpu.k.softmax_forward(xd.reshape(10, 100), y2)
        s.synchronize()
    assert np.isfinite(gpu.host(y2)).all()


def test_activation_bad_input(gpu):
    k, cp = gpu.k, gpu.cp
    x, y = cp.ones(10, np.float32), cp.empty(10, np.float32)
    with pytest.raises(TypeError, match="CuPy"):
        k.activation_forward("relu", np.ones(10, np.float32), y)
    with pytest.raises(TypeError, match="CuPy"):
        k.softmax_forward(x.reshape(2, 5), np.empty((2, 5), np.float32))
    with pytest.raises(TypeError, match="float32"):
        k.activation_forward("relu", cp.ones(10, cp.float64), y)
    with pytest.raises(ValueError, match="shape"):
        k.activation_forward("relu", x, cp.empty(9, np.float32))
    with pytest.raises(ValueError, match="contiguous"):
        k.activation_forward("relu", cp.ones(20, np.float32)[::2], y)
    with pytest.raises(ValueError, match="unknown activation"):
        k.activation_forward("softmax", x, y)
    with pytest.raises(ValueError, match="overlaps"):
        k.activation_forward("relu", x[1:], x[:-1])
    with pytest.raises(ValueError, match="overlaps"):
        k.activation_backward("relu", x, y, x)
    with pytest.raises(ValueError, match="shape"):
        k.softmax_backward(x.reshape(2, 5), y.reshape(5, 2), cp.empty((2, 5), np.float32))
    with pytest.raises(ValueError, match="contiguous"):
        k.softmax_forward(cp.ones((4, 10), np.float32)[:, ::2], cp.empty((4, 5), np.float32))
    with pytest.raises(ValueError, match="empty"):
        k.softmax_forward(cp.ones((3, 0), np.float32), cp.ones((3, 0), np.float32))


def test_any_cuda_array_interface_object(gpu):
    """Not only cupy.ndarray: any object with __cuda_array_interface__ (numba, torch, a wrapper)
    is accepted, gives the same result, and gets the same dtype and layout checks."""
    k, cp = gpu.k, gpu.cp

    class Wrapped:   # exposes only the interface, as a foreign library's array would
        def __init__(self, a):
            self.__cuda_array_interface__ = a.__cuda_array_interface__

    x = cp.asarray(np.linspace(-2, 2, 37, dtype=np.float32))
    y_fast, y_cai = cp.empty_like(x), cp.empty_like(x)
    k.activation_forward("tanh", x, y_fast)
    k.activation_forward("tanh", Wrapped(x), Wrapped(y_cai))
    np.testing.assert_array_equal(gpu.host(y_fast), gpu.host(y_cai))
    with pytest.raises(TypeError, match="float32"):
        k.activation_forward("relu", Wrapped(cp.ones(37, cp.float64)), y_cai)
    with pytest.raises(ValueError, match="contiguous"):
        k.activation_forward("relu", Wrapped(cp.ones(74, np.float32)[::2]), y_cai)
    with pytest.raises(TypeError, match="float32"):
        k.activation_forward("relu", cp.ones(37, cp.float64), y_fast)
