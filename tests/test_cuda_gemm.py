"""CUDA SGEMM and bias_backward (kilnet._cuda) against the CPU reference (kilnet._cpu.ref) and
numpy in float64. Shapes straddle the big kernel's 128x128x16 tiles, the small kernel's 32x32x32
tiles, split-K, the float4 and scalar load paths; outputs are poisoned with NaN first."""
import itertools

import numpy as np
import pytest

from conftest import rand
from kilnet import _cpu
from test_gemm import TRANS, expected, operands   # the CPU tests' operands and float64 reference

pytestmark = pytest.mark.cuda

def check(got, want, K):
    # float32 sums of K products of magnitude <= 1 (split-K and tile order differ from the CPU).
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 + 3e-7 * K)


def run_gpu(gpu, a, b, c0, ta, tb, alpha=1.0, beta=0.0, bias=None):
    """The GPU result; C starts as c0, or NaN when beta == 0 (it must not be read)."""
    c = gpu.poisoned(c0.shape) if beta == 0 else gpu.dev(c0)
    gpu.k.gemm(gpu.dev(a), gpu.dev(b), c, ta, tb, alpha, beta, gpu.dev(bias))
    return gpu.host(c)


# 1..3: tiny; 17/33/65: not tile multiples; 128/129/131: one big tile and one past it;
# K 16/17/300/1000: the big kernel's k-steps, odd K (scalar loads), split-K.
SHAPES = [(1, 1, 1), (3, 7, 17), (17, 33, 65), (33, 65, 127), (65, 17, 300), (128, 128, 16),
          (129, 131, 17), (130, 257, 64), (200, 129, 300), (257, 300, 33), (33, 129, 1000),
          (129, 129, 1024), (5, 3, 2000)]


@pytest.mark.parametrize("ta,tb", TRANS)
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_matches_reference(gpu, rng, M, N, K, ta, tb):
    a, b = operands(rng, M, N, K, ta, tb)
    c0, bias = rand(rng, M, N), rand(rng, N)
    got = run_gpu(gpu, a, b, c0, ta, tb, 0.75, 0.5, bias)
    ref = c0.copy()
    _cpu.ref.gemm(a, b, ref, ta, tb, 0.75, 0.5, bias)
    check(got, ref, K)
    check(got, expected(a, b, c0, ta, tb, 0.75, 0.5, bias), K)


@pytest.mark.parametrize("alpha,beta,with_bias", [(1.0, 0.0, False), (1.0, 0.0, True),
                                                  (-0.5, 1.0, False), (2.0, 1.0, True),
                                                  (1.0, -0.3, True), (0.0, 0.7, True)])
@pytest.mark.parametrize("M,N,K", [(37, 150, 500), (150, 260, 500)])   # small and big kernel
@pytest.mark.parametrize("ta,tb", TRANS)
def test_alpha_beta_bias(gpu, rng, alpha, beta, with_bias, M, N, K, ta, tb):
    a, b = operands(rng, M, N, K, ta, tb)
    c0 = rand(rng, M, N)
    bias = rand(rng, N) if with_bias else None
    got = run_gpu(gpu, a, b, c0, ta, tb, alpha, beta, bias)
    assert np.isfinite(got).all()   # beta == 0: the NaN in C was never read
    check(got, expected(a, b, c0, ta, tb, alpha, beta, bias), K)


# The canonical model's Dense layer: forward, weight gradient, input gradient; and conv-like.
NN_SHAPES = [(32, 10, 5408, False, False), (5408, 10, 32, True, False),
             (32, 5408, 10, False, True), (256, 10, 5408, False, False),
             (5408, 10, 256, True, False), (256, 5408, 10, False, True),
             (676, 32, 9, False, False), (288, 32, 676, True, False)]


@pytest.mark.parametrize("M,N,K,ta,tb", NN_SHAPES)
def test_nn_shapes(gpu, rng, M, N, K, ta, tb):
    a, b = operands(rng, M, N, K, ta, tb)
    c0, bias = rand(rng, M, N), rand(rng, N)
    for beta in (0.0, 1.0):
        got = run_gpu(gpu, a, b, c0, ta, tb, 1.0, beta, bias)
        check(got, expected(a, b, c0, ta, tb, 1.0, beta, bias), K)


def test_deterministic(gpu, rng):
    """Split-K sums its partials in a fixed order: two runs are bitwise equal."""
    for M, N, K in [(32, 10, 5408), (256, 256, 4096)]:
        a, b = operands(rng, M, N, K, False, False)
        da, db = gpu.dev(a), gpu.dev(b)
        outs = []
        for _ in range(2):
            c = gpu.poisoned((M, N))
            gpu.k.gemm(da, db, c)
            outs.append(gpu.host(c))
        np.testing.assert_array_equal(outs[0], outs[1])


def test_unaligned_views_use_scalar_loads(gpu, rng):
    """K and N multiples of 4 but base pointers off by 4 bytes: the float4 path must not run."""
    cp = gpu.cp
    M, N, K = 200, 132, 68
    a, b = operands(rng, M, N, K, False, False)
    bias = rand(rng, N)
    da = cp.empty(M * K + 1, cp.float32)[1:].reshape(M, K)
    db = cp.empty(K * N + 1, cp.float32)[1:].reshape(K, N)
    dc = cp.full(M * N + 1, np.nan, cp.float32)[1:].reshape(M, N)
    da[...] = cp.asarray(a)
    db[...] = cp.asarray(b)
    gpu.k.gemm(da, db, dc, bias=gpu.dev(bias))
    check(gpu.host(dc), expected(a, b, None, False, False, 1.0, 0.0, bias), K)


def test_large_against_float64(gpu, rng):
    M = N = K = 1024
    a, b = operands(rng, M, N, K, False, False)
    c = gpu.poisoned((M, N))
    gpu.k.gemm(gpu.dev(a), gpu.dev(b), c)
    want = a.astype(np.float64) @ b.astype(np.float64)
    err = np.abs(gpu.host(c) - want).max() / np.abs(want).max()
    assert err < 1e-5, err


def test_k_zero_and_empty(gpu, rng):
    M, N = 5, 19
    a, b = gpu.cp.zeros((M, 0), gpu.cp.float32), gpu.cp.zeros((0, N), gpu.cp.float32)
    c0, bias = rand(rng, M, N), rand(rng, N)
    c = gpu.dev(c0)
    gpu.k.gemm(a, b, c, False, False, 2.0, 0.5, gpu.dev(bias))
    np.testing.assert_allclose(gpu.host(c), 0.5 * c0 + bias, rtol=1e-6)
    c = gpu.poisoned((M, N))
    gpu.k.gemm(a, b, c)
    assert (gpu.host(c) == 0).all()
    gpu.k.gemm(gpu.cp.zeros((0, 4), gpu.cp.float32), gpu.cp.zeros((4, 3), gpu.cp.float32),
               gpu.cp.zeros((0, 3), gpu.cp.float32))


def test_stream_argument(gpu, rng):
    cp = gpu.cp
    a, b = operands(rng, 70, 40, 30, False, False)
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        da, db = cp.asarray(a), cp.asarray(b)
        c = cp.full((70, 40), np.nan, cp.float32)
    gpu.k.gemm(da, db, c, stream=s)
    s.synchronize()
    check(cp.asnumpy(c), expected(a, b, None, False, False, 1.0, 0.0, None), 30)
    c2 = cp.full((70, 40), np.nan, cp.float32)
    gpu.k.gemm(da, db, c2, stream=s.ptr)
    s.synchronize()
    np.testing.assert_array_equal(cp.asnumpy(c2), cp.asnumpy(c))


def test_tf32_path(gpu, rng):
    """TF32 rounds the inputs to 10 mantissa bits: relative error ~1e-3. Switched off after."""
    try:
        gpu.k.set_tf32(True)
        for (M, N, K), (ta, tb) in itertools.product([(256, 384, 512), (129, 200, 77), (32, 10, 700)], TRANS):
            a, b = operands(rng, M, N, K, ta, tb)
            c0, bias = rand(rng, M, N), rand(rng, N)
            got = run_gpu(gpu, a, b, c0, ta, tb, 1.0, 0.5, bias)
            want = expected(a, b, c0, ta, tb, 1.0, 0.5, bias)
            err = np.abs(got - want).max() / max(1.0, np.abs(want).max())
            assert err < 5e-3, (M, N, K, ta, tb, err)
    finally:
        gpu.k.set_tf32(False)
    assert not gpu.k.tf32()


# ---- bias_backward ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (32, 10), (33, 65), (5408, 10), (4, 13, 13, 32),
                                   (20000, 33), (3, 1000)])
def test_bias_backward(gpu, rng, shape):
    dy = rand(rng, *shape)
    N = shape[-1]
    db0 = rand(rng, N)
    db = gpu.dev(db0)
    gpu.k.bias_backward(gpu.dev(dy), db)
    ref = db0.copy()
    _cpu.ref.bias_backward(dy, ref)
    rows = dy.size // N
    np.testing.assert_allclose(gpu.host(db), ref, rtol=1e-5, atol=1e-6 * rows)
    # deterministic: the same call again gives bitwise the same increment
    db2 = gpu.dev(db0)
    gpu.k.bias_backward(gpu.dev(dy), db2)
    np.testing.assert_array_equal(gpu.host(db2), gpu.host(db))


@pytest.mark.parametrize("M,N,K,ta", [(128, 128, 4096, True), (33, 65, 127, False), (5, 3, 2000, True)])
def test_colsum(gpu, rng, M, N, K, ta):
    """gemm(colsum=) adds op(b)'s column sums (the bias gradient of x^T dz) as on the CPU;
    a transposed b is refused on the GPU."""
    a, b = operands(rng, M, N, K, ta, False)
    cs0 = rand(rng, N)
    c, cs = gpu.poisoned((M, N)), gpu.dev(cs0)
    gpu.k.gemm(gpu.dev(a), gpu.dev(b), c, ta, False, colsum=cs)
    check(gpu.host(c), expected(a, b, None, ta, False, 1.0, 0.0, None), K)
    np.testing.assert_allclose(gpu.host(cs), cs0 + b.astype(np.float64).sum(axis=0), rtol=1e-5, atol=1e-6 * K)
    with pytest.raises(ValueError, match="colsum"):
        gpu.k.gemm(gpu.dev(a), gpu.dev(b.T.copy()), c, ta, True, colsum=cs)


# ---- argument errors ----------------------------------------------------------------------------

def test_errors(gpu, rng):
    cp, k = gpu.cp, gpu.k
    a, b, c = cp.zeros((4, 5), cp.float32), cp.zeros((5, 6), cp.float32), cp.zeros((4, 6), cp.float32)
    with pytest.raises(TypeError, match="CuPy"):
        k.gemm(np.zeros((4, 5), np.float32), b, c)
    with pytest.raises(TypeError, match="CuPy"):
        k.bias_backward(np.zeros((4, 6), np.float32), cp.zeros(6, cp.float32))
    with pytest.raises(TypeError):
        k.gemm(a.astype(cp.float64), b, c)
    with pytest.raises(ValueError, match="inner"):
        k.gemm(a, cp.zeros((4, 6), cp.float32), c)
    with pytest.raises(ValueError):
        k.gemm(a, b, cp.zeros((4, 7), cp.float32))
    with pytest.raises(ValueError):
        k.gemm(a, b, c, bias=cp.zeros(5, cp.float32))
    with pytest.raises(ValueError, match="contiguous"):
        k.gemm(cp.zeros((5, 4), cp.float32).T, b, c)
    with pytest.raises(ValueError):
        k.gemm(a, b, cp.zeros((4, 6, 1), cp.float32))
    with pytest.raises(ValueError, match="overlaps"):
        buf = cp.zeros(100, cp.float32)
        k.gemm(buf[:20].reshape(4, 5), b, buf[:24].reshape(4, 6))
    with pytest.raises(ValueError):
        k.bias_backward(cp.zeros((4, 6), cp.float32), cp.zeros(5, cp.float32))
    with pytest.raises(TypeError):
        k.bias_backward(cp.zeros((4, 6), cp.float32), cp.zeros(6, cp.float64))
