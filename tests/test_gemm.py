"""SGEMM: the fast kernel (kilnet._cpu.gemm) against the naive reference (kilnet._cpu.ref.gemm),
numpy in float64 and torch; the AVX-512, AVX2 and portable paths, 1 and 2 threads; the binding's
argument checks. Shapes straddle the micro-tiles (AVX2 and portable: MR=6, NR=16, MC=144,
KC=384, NC=4096; AVX-512, for N > 16: MR=12, NR=32, MC=144, KC=256, NC from the L2 size)
of csrc/cpu/gemm.cpp."""
import itertools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import HAVE_TORCH, rand
from kilnet import _cpu

TRANS = list(itertools.product([False, True], [False, True]))


def operands(rng, M, N, K, ta, tb):
    a = rand(rng, K, M) if ta else rand(rng, M, K)
    b = rand(rng, N, K) if tb else rand(rng, K, N)
    return a, b


def expected(a, b, c0, ta, tb, alpha, beta, bias):
    """float64 numpy; c0 is C before the call (ignored when beta == 0)."""
    oa = a.T.astype(np.float64) if ta else a.astype(np.float64)
    ob = b.T.astype(np.float64) if tb else b.astype(np.float64)
    out = alpha * (oa @ ob)
    if beta != 0:
        out += beta * c0.astype(np.float64)
    if bias is not None:
        out += bias.astype(np.float64)
    return out


def check(got, want, K):
    # float32 accumulation over K terms of magnitude <= 1: error grows at most ~K * eps.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 + 2e-7 * K)


def run_both(a, b, c0, ta, tb, alpha=1.0, beta=0.0, bias=None):
    """Fast and reference results for the same call (c0 is copied, never modified)."""
    c_fast, c_ref = c0.copy(), c0.copy()
    _cpu.gemm(a, b, c_fast, ta, tb, alpha, beta, bias)
    _cpu.ref.gemm(a, b, c_ref, ta, tb, alpha, beta, bias)
    return c_fast, c_ref


@pytest.fixture
def threads():
    """Set the kernel thread count inside a test; restored afterwards."""
    old = _cpu.get_num_threads()
    yield _cpu.set_num_threads
    _cpu.set_num_threads(old)


# Edges of the 6x16 tile (1, 3, 7, 17, 33, 65, 127), N <= 128 (op(A) read in place) and N > 128
# (op(A) packed), K around KC (383, 384, 385) and several K blocks (800), M around MC (143..145).
SHAPES = [(1, 1, 1), (3, 7, 17), (7, 17, 3), (17, 33, 65), (33, 65, 127), (65, 127, 33),
          (127, 3, 7), (6, 16, 384), (5, 129, 385), (7, 20, 383), (13, 200, 800), (143, 31, 40),
          (144, 16, 6), (145, 140, 9)]


@pytest.mark.parametrize("ta,tb", TRANS)
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_matches_reference_and_numpy(rng, M, N, K, ta, tb):
    a, b = operands(rng, M, N, K, ta, tb)
    c0 = rand(rng, M, N)
    bias = rand(rng, N)
    got, ref = run_both(a, b, c0, ta, tb, 0.75, 0.5, bias)
    check(got, ref, K)
    check(got, expected(a, b, c0, ta, tb, 0.75, 0.5, bias), K)


@pytest.mark.parametrize("alpha,beta,with_bias", [(1.0, 0.0, False), (1.0, 0.0, True),
                                                  (-0.5, 1.0, False), (2.0, 1.0, True),
                                                  (1.0, -0.3, True), (0.0, 0.7, True)])
@pytest.mark.parametrize("ta,tb", TRANS)
def test_alpha_beta_bias(rng, alpha, beta, with_bias, ta, tb):
    M, N, K = 37, 150, 500   # 500 = two K blocks: bias and beta must apply exactly once
    a, b = operands(rng, M, N, K, ta, tb)
    c0 = rand(rng, M, N)
    bias = rand(rng, N) if with_bias else None
    got, ref = run_both(a, b, c0, ta, tb, alpha, beta, bias)
    check(got, ref, K)
    check(got, expected(a, b, c0, ta, tb, alpha, beta, bias), K)


@pytest.mark.parametrize("ta,tb", TRANS)
@pytest.mark.parametrize("M,N,K", [(7, 9, 5), (50, 40, 600), (8, 300, 20)])
def test_beta_zero_ignores_nan_in_c(rng, M, N, K, ta, tb):
    a, b = operands(rng, M, N, K, ta, tb)
    bias = rand(rng, N)
    c = np.full((M, N), np.nan, dtype=np.float32)
    _cpu.gemm(a, b, c, ta, tb, 1.0, 0.0, bias)
    assert np.isfinite(c).all()
    check(c, expected(a, b, c, ta, tb, 1.0, 0.0, bias), K)


def test_k_zero_is_scale_and_bias(rng):
    M, N = 5, 19
    a, b = np.zeros((M, 0), np.float32), np.zeros((0, N), np.float32)
    c0, bias = rand(rng, M, N), rand(rng, N)
    got, ref = run_both(a, b, c0, False, False, 2.0, 0.5, bias)
    np.testing.assert_allclose(got, 0.5 * c0 + bias, rtol=1e-6)
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    c = np.full((M, N), np.nan, dtype=np.float32)
    _cpu.gemm(a, b, c, beta=0.0)   # beta == 0: C not read, result is zeros
    assert (c == 0).all()


@pytest.mark.parametrize("M,N", [(0, 5), (5, 0), (0, 0)])
def test_empty_output(rng, M, N):
    a, b = rand(rng, M, 4), rand(rng, 4, N)
    c = np.empty((M, N), np.float32)
    _cpu.gemm(a, b, c)   # nothing to do, nothing to fail
    _cpu.ref.gemm(a, b, c)


@pytest.mark.parametrize("ta,tb", TRANS)
@pytest.mark.parametrize("M,N,K", [(9, 4100, 7), (7, 8230, 3), (300, 140, 400), (300, 70, 400)])
def test_one_and_two_threads(rng, threads, M, N, K, ta, tb):
    """Across NC (N = 4100 on one thread, 8230 split in two) and MC (M = 300 split in two), with
    op(A) packed (N = 140) or read in place (N = 70). Each element is computed the same way
    whatever the thread count, so the results are bitwise equal."""
    a, b = operands(rng, M, N, K, ta, tb)
    c0, bias = rand(rng, M, N), rand(rng, N)
    out = {}
    for n in (1, 2):
        threads(n)
        for _ in range(2):
            c = c0.copy()
            _cpu.gemm(a, b, c, ta, tb, 1.0, 0.25, bias)
            if n in out:   # deterministic for a given thread count
                np.testing.assert_array_equal(c, out[n])
            out[n] = c
    check(out[1], expected(a, b, c0, ta, tb, 1.0, 0.25, bias), K)
    np.testing.assert_array_equal(out[1], out[2])


# Runs of tiles per micro-kernel call (csrc/cpu/gemm.cpp, gemm_rect): a wide thin-K block is
# swept row by row (many full 16-wide tiles, then a narrow one), a tall one column by column
# (many full 6-row tiles, then a short one), with bias stepping along the row sweeps; and the
# AVX2 pack of a transposed B (8x8 transposes, masked loads for the last K % 8 values), and the
# 1-2 row slivers (M % 6 in {1, 2}) swept two tiles at a time.
SWEEP_SHAPES = [(5, 161, 3), (13, 335, 10), (31, 250, 9), (7, 4100, 11), (299, 10, 32),
                (677, 33, 9), (61, 17, 1), (200, 40, 7), (19, 48, 23), (2, 1000, 2),
                (32, 300, 10), (8, 520, 17), (14, 161, 400)]


@pytest.mark.parametrize("alpha,beta", [(1.0, 0.0), (1.0, 1.0), (0.5, -2.0)])
@pytest.mark.parametrize("ta,tb", TRANS)
@pytest.mark.parametrize("M,N,K", SWEEP_SHAPES)
def test_tile_sweeps(rng, M, N, K, ta, tb, alpha, beta):
    a, b = operands(rng, M, N, K, ta, tb)
    c0, bias = rand(rng, M, N), rand(rng, N)
    got, ref = run_both(a, b, c0, ta, tb, alpha, beta, bias)
    check(got, ref, K)
    # Random odd shapes as well (fixed seed), without bias.
    r = np.random.default_rng(M * 1000 + N + K)
    M2, N2, K2 = (int(x) for x in r.integers(1, [80, 300, 40]))
    a, b = operands(rng, M2, N2, K2, ta, tb)
    c0 = rand(rng, M2, N2)
    got, ref = run_both(a, b, c0, ta, tb, alpha, beta)
    check(got, ref, K2)


# The canonical model's Dense layer (forward, weight gradient, input gradient) and conv-as-GEMM.
NN_SHAPES = [(32, 10, 21632, False, False), (21632, 10, 32, True, False),
             (32, 21632, 10, False, True), (676, 32, 9, False, False),
             (196, 64, 288, False, False), (288, 32, 676, True, False)]


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("M,N,K,ta,tb", NN_SHAPES)
def test_nn_shapes(rng, threads, nthreads, M, N, K, ta, tb):
    threads(nthreads)
    check_accumulate_with_bias(rng, M, N, K, ta, tb)


def check_accumulate_with_bias(rng, M, N, K, ta, tb):
    """C += op(a) op(b) + bias against numpy in float64."""
    a, b = operands(rng, M, N, K, ta, tb)
    c0, bias = rand(rng, M, N), rand(rng, N)
    c = c0.copy()
    _cpu.gemm(a, b, c, ta, tb, 1.0, 1.0, bias)
    check(c, expected(a, b, c0, ta, tb, 1.0, 1.0, bias), K)


# Operands of >= 64K floats run with the prefetch stream (gemm_prefetch.h): each block's
# micro-kernels prefetch the next A block, the next K block's B panel or the next column panel.
# These cross every transition (M > MC, K > KC, N > NC on both kernels) with ragged edges; the
# prefetches must never change a result.
@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("ta,tb", TRANS)
@pytest.mark.parametrize("M,N,K", [(301, 4133, 389), (4099, 129, 131), (129, 515, 4097)])
def test_prefetch_stream_shapes(rng, threads, nthreads, M, N, K, ta, tb):
    threads(nthreads)
    check_accumulate_with_bias(rng, M, N, K, ta, tb)


# colsum (the bias gradient of dW = x^T dz) is summed from the packing of op(b) on the main path
# and by a plain pass on the split-K and narrow routes and for a transposed b: every route, 1
# and 2 threads (the same bits: sums in k order), the reference module, colsum accumulating.
@pytest.mark.parametrize("M,N,K,ta,tb", [(128, 512, 1000, True, False), (301, 33, 389, False, False),
                                         (32, 10, 21632, False, False), (999, 7, 200, True, False),
                                         (65, 127, 300, False, True), (7, 1, 3, True, False)])
def test_colsum(rng, threads, M, N, K, ta, tb):
    a, b = operands(rng, M, N, K, ta, tb)
    want_c = expected(a, b, None, ta, tb, 1.0, 0.0, None)
    ob = (b.T if tb else b).astype(np.float64)
    init = rand(rng, N)
    got = {}
    for nthreads in (1, 2):
        threads(nthreads)
        c, cs = np.empty((M, N), np.float32), init.copy()
        _cpu.gemm(a, b, c, ta, tb, colsum=cs)
        check(c, want_c, K)
        np.testing.assert_allclose(cs, init + ob.sum(axis=0), rtol=1e-5, atol=1e-5 + 2e-7 * K)
        got[nthreads] = cs
    np.testing.assert_array_equal(got[1], got[2])
    c, cs = np.empty((M, N), np.float32), init.copy()
    _cpu.ref.gemm(a, b, c, ta, tb, colsum=cs)
    np.testing.assert_allclose(cs, init + ob.sum(axis=0), rtol=1e-6, atol=1e-6)


def test_colsum_bad_input(rng):
    a, b, c = rand(rng, 5, 4), rand(rng, 4, 3), np.empty((5, 3), np.float32)
    with pytest.raises(ValueError, match="colsum"):
        _cpu.gemm(a, b, c, colsum=np.zeros(4, np.float32))
    with pytest.raises((TypeError, ValueError), match="colsum"):
        _cpu.gemm(a, b, c, colsum=np.zeros(3, np.float64))
    with pytest.raises(ValueError, match="colsum"):
        _cpu.gemm(a, b, c, colsum=c[0])   # overlaps c


# The narrow route (gemm_narrow_avx512.cpp: N <= 16, alpha 1, beta 0 or 1, no bias): the split-K
# logits (M*N <= 1024, K >= 8192) and the weight gradient with few units (A transposed, K <=
# 256); odd M for its 8/4/2/1-row groups, several K blocks of gemm_rect. The same bits at 1 and 2
# threads (rows split in multiples of 8), and as the general path (checked against the previous
# build when it was added).
NARROW_SHAPES = [(32, 10, 21632, False), (7, 13, 9000, False), (100, 10, 8192, False), (1, 1, 10000, False),
                 (21632, 10, 32, True), (999, 7, 200, True), (13, 3, 5, True), (1000, 16, 256, True)]


@pytest.mark.parametrize("beta", [0.0, 1.0])
@pytest.mark.parametrize("M,N,K,ta", NARROW_SHAPES)
def test_narrow_route(rng, threads, M, N, K, ta, beta):
    a, b = operands(rng, M, N, K, ta, False)
    c0 = rand(rng, M, N)
    outs = []
    for nthreads in (1, 2):
        threads(nthreads)
        c = c0.copy()
        _cpu.gemm(a, b, c, ta, False, 1.0, beta)
        check(c, expected(a, b, c0, ta, False, 1.0, beta, None), K)
        outs.append(c)
    assert np.array_equal(outs[0], outs[1])


# Edges of the AVX-512 12x32 tile and its blocks: M around 12 and MC, N from 17 (the smallest
# N it takes) across 32 and 64 to packed panels (N > 256), K around KC = 256.
AVX512_SHAPES = [(11, 17, 5), (12, 32, 256), (13, 33, 257), (25, 63, 255), (37, 65, 513),
                 (145, 257, 300), (1, 300, 40), (2, 31, 1), (24, 64, 9), (169, 96, 288),
                 (157, 520, 33), (5, 4130, 7)]


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("alpha,beta,with_bias", [(1.0, 0.0, True), (1.0, 1.0, False), (0.5, -2.0, True)])
@pytest.mark.parametrize("ta,tb", TRANS)
@pytest.mark.parametrize("M,N,K", AVX512_SHAPES)
def test_avx512_tile_edges(rng, threads, nthreads, M, N, K, ta, tb, alpha, beta, with_bias):
    threads(nthreads)
    a, b = operands(rng, M, N, K, ta, tb)
    c0 = rand(rng, M, N)
    bias = rand(rng, N) if with_bias else None
    if beta == 0.0:   # C is not read: NaN in it must not leak
        c = np.full((M, N), np.nan, np.float32)
        _cpu.gemm(a, b, c, ta, tb, alpha, beta, bias)
    else:
        c = c0.copy()
        _cpu.gemm(a, b, c, ta, tb, alpha, beta, bias)
    check(c, expected(a, b, c0, ta, tb, alpha, beta, bias), K)


LEVEL_SCRIPT = textwrap.dedent("""
    import itertools, sys, numpy as np
    from kilnet import _cpu
    assert _cpu.simd_level() == sys.argv[1], _cpu.simd_level()
    rng = np.random.default_rng(7)
    for (M, N, K), (ta, tb), nt in itertools.product(
            [(1, 1, 1), (7, 17, 33), (65, 127, 300), (13, 200, 40), (300, 33, 9), (25, 63, 257)],
            itertools.product([False, True], [False, True]), [1, 2]):
        _cpu.set_num_threads(nt)
        a = rng.uniform(-1, 1, (K, M) if ta else (M, K)).astype(np.float32)
        b = rng.uniform(-1, 1, (N, K) if tb else (K, N)).astype(np.float32)
        bias = rng.uniform(-1, 1, N).astype(np.float32)
        for beta in (0.0, 0.5):
            c0 = rng.uniform(-1, 1, (M, N)).astype(np.float32)
            c = np.full((M, N), np.nan, np.float32) if beta == 0 else c0.copy()
            r = c0.copy()
            _cpu.gemm(a, b, c, ta, tb, 0.5, beta, bias)
            _cpu.ref.gemm(a, b, r, ta, tb, 0.5, beta, bias)
            np.testing.assert_allclose(c, r, rtol=1e-5, atol=1e-5 + 2e-7 * K)
    print("ok")
""")


LEVELS = ["scalar", "avx2", "avx512"]


@pytest.mark.parametrize("level", ["scalar", "avx2"])
def test_lower_level_in_subprocess(level):
    """KILNET_SIMD is read once per process, so a lower level's kernels run in a child."""
    if LEVELS.index(level) > LEVELS.index(_cpu.machine_simd_level()):
        pytest.skip(f"this machine has no {level}")
    env = dict(os.environ, KILNET_SIMD=level)
    here = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(_cpu.__file__))] + env.get("PYTHONPATH", "").split(os.pathsep))
    r = subprocess.run([sys.executable, "-c", LEVEL_SCRIPT, level], env=env, cwd=here,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_gemm_kernel_and_kilnet_gemm_avx512():
    """gemm_kernel() names the micro-kernel of wide products. Where the CPU splits 512-bit FMAs
    (Zen 4) the AVX2 one runs (measured faster there); KILNET_GEMM=avx512 brings the AVX-512 one
    back, and it must then match the reference on its tile edges, so that it stays tested on
    such a CPU too."""
    level, kernel = _cpu.simd_level(), _cpu.gemm_kernel()
    want = {"avx512": ("avx512 12x32", "avx2 6x16"), "avx2": ("avx2 6x16",), "scalar": ("portable",)}[level]
    assert kernel in want, (level, kernel)
    if level != "avx512":
        pytest.skip("no AVX-512 in use")
    script = textwrap.dedent("""
        import itertools, numpy as np
        from kilnet import _cpu
        assert _cpu.gemm_kernel() == "avx512 12x32", _cpu.gemm_kernel()
        rng = np.random.default_rng(9)
        for (M, N, K), (ta, tb), nt in itertools.product(
                %r, itertools.product([False, True], [False, True]), [1, 2]):
            _cpu.set_num_threads(nt)
            a = rng.uniform(-1, 1, (K, M) if ta else (M, K)).astype(np.float32)
            b = rng.uniform(-1, 1, (N, K) if tb else (K, N)).astype(np.float32)
            bias = rng.uniform(-1, 1, N).astype(np.float32)
            c0 = rng.uniform(-1, 1, (M, N)).astype(np.float32)
            c, r = c0.copy(), c0.copy()
            _cpu.gemm(a, b, c, ta, tb, 0.5, -2.0, bias)
            _cpu.ref.gemm(a, b, r, ta, tb, 0.5, -2.0, bias)
            np.testing.assert_allclose(c, r, rtol=1e-5, atol=1e-5 + 2e-7 * K)
        print("ok")
    """ % (AVX512_SHAPES,))
    env = dict(os.environ, KILNET_GEMM="avx512")
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
    bogus = subprocess.run([sys.executable, "-W", "always", "-c", "import kilnet"], capture_output=True, text=True,
                           env=dict(os.environ, KILNET_GEMM="fast"), timeout=120)
    assert bogus.returncode == 0 and "KILNET_GEMM='fast' is not 'avx512'" in bogus.stderr, bogus.stderr[-2000:]


@pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed")
@pytest.mark.parametrize("M,N,K,ta,tb", [(65, 127, 300, False, False), (33, 70, 17, True, True)]
                         + NN_SHAPES[:3])
def test_torch_parity(rng, M, N, K, ta, tb):
    import torch
    a, b = operands(rng, M, N, K, ta, tb)
    bias = rand(rng, N)
    c = np.empty((M, N), np.float32)
    _cpu.gemm(a, b, c, ta, tb, 1.0, 0.0, bias)
    ta_, tb_ = torch.from_numpy(a), torch.from_numpy(b)
    want = torch.addmm(torch.from_numpy(bias), ta_.T if ta else ta_, tb_.T if tb else tb_)
    np.testing.assert_allclose(c, want.numpy(), rtol=1e-5, atol=1e-5 + 2e-7 * K)


# ---- bias_backward ---------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1), (7, 10), (300, 65), (4, 5, 33), (3000, 130), (600, 1030), (5000, 3)])
def test_bias_backward(rng, shape):
    dy = rand(rng, *shape)
    db0 = rand(rng, shape[-1])
    db, dbr = db0.copy(), db0.copy()
    _cpu.bias_backward(dy, db)
    _cpu.ref.bias_backward(dy, dbr)
    np.testing.assert_allclose(db, dbr, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(db, db0 + dy.reshape(-1, shape[-1]).sum(0, dtype=np.float64),
                               rtol=1e-5, atol=1e-5)


def test_bias_backward_same_bits_at_any_thread_count(rng):
    """Row blocks and column strips are fixed by the shape: 1, 2 and 3 threads add the same
    partial sums in the same order."""
    dy = rand(rng, 4100, 200)
    old = _cpu.get_num_threads()
    try:
        outs = []
        for t in (1, 2, 3):
            _cpu.set_num_threads(t)
            db = np.full(200, 0.25, np.float32)
            _cpu.bias_backward(dy, db)
            outs.append(db)
    finally:
        _cpu.set_num_threads(old)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


# ---- bad input: the binding checks, the kernel trusts ----------------------------------------

def test_bad_input():
    a = np.ones((4, 3), np.float32)
    b = np.ones((3, 5), np.float32)
    c = np.zeros((4, 5), np.float32)
    with pytest.raises(TypeError, match="'a'.*float32"):
        _cpu.gemm(a.astype(np.float64), b, c)
    with pytest.raises(TypeError, match="'c'.*float32"):
        _cpu.gemm(a, b, c.astype(np.float16))
    with pytest.raises(TypeError, match="numpy array"):
        _cpu.gemm(a.tolist(), b, c)
    with pytest.raises(ValueError, match="C-contiguous"):
        _cpu.gemm(np.ones((4, 6), np.float32)[:, ::2], b, c)
    with pytest.raises(ValueError, match="C-contiguous"):
        _cpu.gemm(np.ones((3, 4), np.float32).T, b, c)   # pass trans_a instead
    with pytest.raises(ValueError, match="inner dimensions"):
        _cpu.gemm(a, np.ones((4, 5), np.float32), c)
    with pytest.raises(ValueError, match="inner dimensions"):
        _cpu.gemm(a, b, c, trans_a=True)
    with pytest.raises(ValueError, match="'c'.*shape"):
        _cpu.gemm(a, b, np.zeros((5, 4), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        _cpu.gemm(np.ones(3, np.float32), b, c)
    with pytest.raises(ValueError, match="'bias'.*shape"):
        _cpu.gemm(a, b, c, bias=np.ones(4, np.float32))
    ro = np.zeros((4, 5), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        _cpu.gemm(a, b, ro)


def test_aliasing_rejected():
    sq = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match="overlaps input 'a'"):
        _cpu.gemm(sq, np.ones((4, 4), np.float32), sq)
    buf = np.ones((8, 4), np.float32)
    with pytest.raises(ValueError, match="overlaps input 'b'"):
        _cpu.gemm(np.ones((4, 4), np.float32), buf[:4], buf[3:7])   # partial overlap
    c = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="overlaps input 'bias'"):
        _cpu.gemm(np.ones((4, 4), np.float32), np.ones((4, 4), np.float32), c, bias=c[0])
