"""The GELU kernels (exact and tanh): fast and reference against PyTorch on odd sizes, NaN
kept, the backward against central differences of the float64 formula."""
import numpy as np
import pytest
import torch

from conftest import avx2_and_avx512, cpu_threads, streaming_case, views_at

from kilnet import ops
from kilnet.backend import cpu


@pytest.mark.parametrize("approx", [False, True])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 1001, 65537])
def test_gelu_kernels_match_torch(approx, n):
    rng = np.random.default_rng(n)
    x = rng.normal(0, 3, n).astype(np.float32)
    dy = rng.normal(size=n).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.gelu(xt, approximate="tanh" if approx else "none")
    yt.backward(torch.tensor(dy))
    for k in (cpu, cpu.ref):
        y, dx = np.empty_like(x), np.empty_like(x)
        k.gelu_forward(x, y, approx)
        k.gelu_backward(x, dy, dx, approx)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=2e-6, atol=2e-6)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("approx", [False, True])
def test_gelu_edges_and_finite_differences(approx):
    x = np.array([np.nan, 0.0, -0.0, 40.0, -40.0, 1e-30, -6.0, 6.0, 0.5], np.float32)
    y = np.empty_like(x)
    cpu.gelu_forward(x, y, approx)
    assert np.isnan(y[0]) and y[3] == 40.0 and abs(y[4]) < 1e-30 and y[1] == 0.0
    # backward kernel vs central differences of the float64 formula (ops on float64 arrays)
    xs = np.linspace(-5, 5, 101)
    h = 1e-6
    fd = (ops.gelu(xs + h, approximate=approx).numpy() - ops.gelu(xs - h, approximate=approx).numpy()) / (2 * h)
    dx = np.empty(101, np.float32)
    cpu.gelu_backward(xs.astype(np.float32), np.ones(101, np.float32), dx, approx)
    np.testing.assert_allclose(dx, fd, rtol=1e-5, atol=2e-6)
    with pytest.raises((ValueError, TypeError)):
        cpu.gelu_forward(x, np.empty(3, np.float32), approx)


def test_avx2_level_matches_avx512_level():
    """The AVX-512 blocks (masked tails, reciprocal + Newton for the divisions) agree with the
    AVX2 ones, forward and backward, exact and tanh, on sizes with every tail: to a few ulp of
    1 + erf (or 1 + tanh) times |x|/2, which is what either carries (x << 0 cancels to ~0)."""
    body = """
r = np.random.default_rng(0)
for n in (1, 7, 15, 17, 33, 129, 1001):
    x = (4 * r.standard_normal(n)).astype(np.float32)
    dy = r.standard_normal(n).astype(np.float32)
    for ap in (False, True):
        y, dx = np.empty_like(x), np.empty_like(x)
        _cpu.gelu_forward(x, y, ap)
        _cpu.gelu_backward(x, dy, dx, ap)
        out[f"y_{n}_{ap}"], out[f"dx_{n}_{ap}"] = y, dx
"""
    lo, hi = avx2_and_avx512(body)
    for k in hi:
        np.testing.assert_allclose(lo[k], hi[k], rtol=2e-6, atol=4e-6, err_msg=k)


@pytest.mark.parametrize("nt", [1, 3])
@pytest.mark.parametrize("approximate", [False, True])
@pytest.mark.parametrize("offsets", [(64, 80, 128), (4096, 4096 + 512, 0), (0, 16, 32)])
def test_gelu_output_just_ahead_of_an_input_same_bits(nt, approximate, offsets):
    """y (dx) 16-512 bytes after x (or dy) modulo 2 MiB goes through staging blocks
    (store_ahead.h): the same bits as any other layout, at any thread count."""
    from kilnet import _cpu
    x0, dy0 = streaming_case(np.random.default_rng(5), 50_003)
    with cpu_threads(nt):
        y0, dx0 = np.empty_like(x0), np.empty_like(x0)
        _cpu.gelu_forward(x0, y0, approximate)
        _cpu.gelu_backward(x0, dy0, dx0, approximate)
        x, y, dy = views_at(x0.shape, offsets)
        x[...], dy[...] = x0, dy0
        _cpu.gelu_forward(x, y, approximate)
        np.testing.assert_array_equal(y, y0)
        _cpu.gelu_backward(x, dy, y, approximate)   # dx into y's place: after x, before/after dy
        np.testing.assert_array_equal(y, dx0)


@pytest.mark.parametrize("nt", [1, 3])
@pytest.mark.parametrize("approximate", [False, True])
def test_gelu_bfloat16_output(nt, approximate):
    """A bfloat16 y (mixed precision): the float32 kernel's values rounded once, at any thread
    count and length (pieces of 2048 and a ragged end); the reference likewise; bad y named."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from kilnet import _cpu
    x, _ = streaming_case(np.random.default_rng(9), 70_001)
    with cpu_threads(nt):
        for k in (_cpu, _cpu.ref):
            y32, y16 = np.empty_like(x), np.empty(x.shape, ml_dtypes.bfloat16)
            k.gelu_forward(x, y32, approximate)
            k.gelu_forward(x, y16, approximate)
            np.testing.assert_array_equal(y16.view(np.uint16), y32.astype(ml_dtypes.bfloat16).view(np.uint16))
    with pytest.raises(ValueError, match="'y' must have shape"):
        _cpu.gelu_forward(x, np.empty(5, ml_dtypes.bfloat16))
    with pytest.raises(TypeError, match="float32"):   # a bfloat16 x goes into a bfloat16 y only
        _cpu.gelu_forward(x.astype(ml_dtypes.bfloat16), np.empty(x.shape, np.float32))


@pytest.mark.parametrize("nt", [1, 3])
@pytest.mark.parametrize("approximate", [False, True])
def test_gelu_bfloat16_input(nt, approximate):
    """A bfloat16 x (a mixed-precision Dense's pre-activation): the forward into a bfloat16 y
    (in place too) and the backward into a float32 dx are the float32 kernels' on x widened, at
    any thread count and length, in both modules; bad arguments named."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from kilnet import _cpu
    x32, dy = streaming_case(np.random.default_rng(12), 70_001)
    x = (3 * x32).astype(ml_dtypes.bfloat16)
    wide = x.astype(np.float32)
    with cpu_threads(nt):
        for k in (_cpu, _cpu.ref):
            y32, y16 = np.empty_like(wide), np.empty(x.shape, ml_dtypes.bfloat16)
            k.gelu_forward(wide, y32, approximate)
            k.gelu_forward(x, y16, approximate)
            np.testing.assert_array_equal(y16.view(np.uint16), y32.astype(ml_dtypes.bfloat16).view(np.uint16))
            inplace = x.copy()
            k.gelu_forward(inplace, inplace, approximate)
            np.testing.assert_array_equal(inplace.view(np.uint16), y16.view(np.uint16))
            dx32, dx = np.empty_like(wide), np.empty_like(wide)
            k.gelu_backward(wide, dy, dx32, approximate)
            k.gelu_backward(x, dy, dx, approximate)
            np.testing.assert_array_equal(dx, dx32)
            dx16 = np.empty(x.shape, ml_dtypes.bfloat16)   # a bfloat16 dx: the same, rounded once
            k.gelu_backward(x, dy, dx16, approximate)
            np.testing.assert_array_equal(dx16.view(np.uint16), dx32.astype(ml_dtypes.bfloat16).view(np.uint16))
    with pytest.raises(ValueError, match="'dx' must have shape"):
        _cpu.gelu_backward(x, dy, np.empty(5, np.float32))
    with pytest.raises(TypeError, match="float32"):
        _cpu.gelu_backward(x, dy.astype(np.float64), np.empty_like(dy))
    with pytest.raises(TypeError, match="float32"):   # a bfloat16 dx needs a bfloat16 x
        _cpu.gelu_backward(wide, dy, np.empty(x.shape, ml_dtypes.bfloat16))


def test_gelu_dense_under_mixed_bfloat16():
    """Dense(gelu) under mixed_bfloat16 keeps its pre-activation bfloat16 (x W + b rounded once
    by the GEMM, as Keras's bfloat16 z) and writes its bfloat16 output from the GELU kernel on it;
    the gradient through it is float32: the GELU gradient at the bfloat16 z, rounded once to the
    bfloat16 dz its GEMMs take (the bias gradient sums that dz)."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from kilnet import GradientTape, Tensor, layers
    rng = np.random.default_rng(10)
    x = rng.standard_normal((7, 40)).astype(ml_dtypes.bfloat16)
    d16 = layers.Dense(48, activation="gelu", dtype="mixed_bfloat16")
    xt = Tensor(x)
    with GradientTape() as tape:
        tape.watch(xt)
        y = d16(xt)
        loss = ops.sum(ops.cast(y, "float32"))
    assert y.dtype == ml_dtypes.bfloat16
    z = np.empty((7, 48), ml_dtypes.bfloat16)   # the same bfloat16 GEMM's rounded output, then GELU
    cpu.gemm_bf16(x, d16.kernel, z, bias=d16.bias)
    g = np.empty((7, 48), np.float32)
    cpu.gelu_forward(z.astype(np.float32), g, False)
    np.testing.assert_array_equal(y.numpy().view(np.uint16), g.astype(ml_dtypes.bfloat16).view(np.uint16))
    dx, db = tape.gradient(loss, [xt, d16.trainable_variables[1]])
    assert dx.dtype == np.float32
    dz = np.empty_like(g)
    cpu.gelu_backward(z.astype(np.float32), np.ones_like(g), dz, False)
    dz16 = dz.astype(ml_dtypes.bfloat16)
    expect = np.empty((7, 40), np.float32)
    cpu.gemm_bf16(dz16, d16.kernel, expect, False, True)
    np.testing.assert_allclose(np.asarray(dx), expect, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(db), dz16.astype(np.float64).sum(axis=0), rtol=1e-6, atol=1e-6)
