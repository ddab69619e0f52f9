"""bfloat16 GEMM (kilnet._cpu.gemm_bf16): AMX tiles where bf16_level() == 'amx', else the float32
GEMM on the rounded operands. Checked against the reference (double sums of the same
bfloat16-rounded operands: the products are exact, so only float32 summation separates them),
against PyTorch's bfloat16 rounding, on odd shapes that straddle the 32x32 blocks and 32-long
k steps, every transpose, float32 and bfloat16 operands, alpha/beta/bias, 1 and 2 threads."""
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import HAVE_TORCH
from kilnet import _cpu

SHAPES = [(1, 1, 1), (32, 32, 32), (33, 47, 71), (31, 33, 32), (64, 96, 257), (100, 300, 1030),
          (70, 600, 20), (5, 530, 3), (530, 7, 64), (40, 1100, 40)]   # (N > 1024: two B panels)
EPILOGUES = [(1.0, 0.0, False), (1.0, 0.0, True), (1.0, 1.0, True), (1.0, 1.0, False), (0.5, -2.0, True)]


@pytest.fixture
def threads():
    old = _cpu.get_num_threads()
    yield _cpu.set_num_threads
    _cpu.set_num_threads(old)


def operands(rng, M, N, K, ta, tb, bf16):
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
    if bf16:
        a, b = _cpu.to_bfloat16(a), _cpu.to_bfloat16(b)
    return a, b


def rounded(x):
    """The float32 values a float32 or bfloat16-bits operand stands for after rounding."""
    return _cpu.from_bfloat16(x if x.dtype == np.uint16 else _cpu.to_bfloat16(x)).astype(np.float64)


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("ta,tb", list(itertools.product([False, True], repeat=2)))
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_matches_reference(threads, nthreads, bf16, ta, tb, M, N, K):
    threads(nthreads)
    rng = np.random.default_rng(M * 7919 + N * 31 + K)
    a, b = operands(rng, M, N, K, ta, tb, bf16)
    for alpha, beta, with_bias in EPILOGUES:
        c0 = rng.standard_normal((M, N)).astype(np.float32)
        bias = rng.standard_normal(N).astype(np.float32) if with_bias else None
        c = np.full((M, N), np.nan, np.float32) if beta == 0 else c0.copy()
        r = c0.copy()
        _cpu.gemm_bf16(a, b, c, ta, tb, alpha, beta, bias)
        _cpu.ref.gemm_bf16(a, b, r, ta, tb, alpha, beta, bias)
        # float32 sums of K exact products of size <= ~16: error ~ K * 2**-24 * sum |terms|.
        oa = rounded(a).T if ta else rounded(a)
        ob = rounded(b).T if tb else rounded(b)
        scale = np.abs(oa) @ np.abs(ob) * abs(alpha) + np.abs(c0) * abs(beta) + 1.0
        np.testing.assert_array_less(np.abs(c.astype(np.float64) - r), 2e-7 * (K + 4) * scale)


OUT16_SHAPES = [(1, 1, 1), (33, 47, 71), (64, 96, 257), (100, 300, 1030), (530, 7, 64), (40, 70, 2100),
                (300, 64, 128), (20, 300, 2100)]   # (K 2100: B panels narrowed to 224 columns)


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("ta,tb", list(itertools.product([False, True], repeat=2)))
@pytest.mark.parametrize("M,N,K", OUT16_SHAPES)
def test_bfloat16_output(threads, nthreads, ta, tb, M, N, K):
    """A bfloat16 c gets op(a) @ op(b) + bias rounded once: within half a bfloat16 step (2**-8
    relative, plus the float32 sum's error) of the double reference, and the same bits as
    rounding the float32 result where the two sum in the same order (all but a few K > 256
    corners); the reference's bfloat16 c is its float32 one rounded."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    threads(nthreads)
    rng = np.random.default_rng(M * 31 + N * 7 + K)
    a, b = operands(rng, M, N, K, ta, tb, bf16=(M + N) % 2 == 0)
    for bias in (None, rng.standard_normal(N).astype(np.float32)):
        c16 = np.full((M, N), np.nan, ml_dtypes.bfloat16)
        c32 = np.empty((M, N), np.float32)
        _cpu.gemm_bf16(a, b, c16, ta, tb, bias=bias)
        _cpu.gemm_bf16(a, b, c32, ta, tb, bias=bias)
        oa = rounded(a).T if ta else rounded(a)
        ob = rounded(b).T if tb else rounded(b)
        exact = oa @ ob + (0.0 if bias is None else bias.astype(np.float64))
        scale = np.abs(oa) @ np.abs(ob) + (0.0 if bias is None else np.abs(bias)) + 1.0
        err = np.abs(c16.astype(np.float64) - exact)
        np.testing.assert_array_less(err, 2.0 ** -8 * np.abs(exact) + 2e-7 * (K + 4) * scale)
        assert (c16.view(np.uint16) == _cpu.to_bfloat16(c32)).mean() > 0.99
        r16, r32 = np.empty((M, N), ml_dtypes.bfloat16), np.empty((M, N), np.float32)
        _cpu.ref.gemm_bf16(a, b, r16, ta, tb, bias=bias)
        _cpu.ref.gemm_bf16(a, b, r32, ta, tb, bias=bias)
        np.testing.assert_array_equal(r16.view(np.uint16), _cpu.to_bfloat16(r32))


@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("ta,tb", list(itertools.product([False, True], repeat=2)))
@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (33, 47, 71), (530, 7, 64), (70, 600, 1030), (40, 1100, 40)])
def test_column_sums(threads, nthreads, bf16, ta, tb, M, N, K):
    """colsum += op(b)'s column sums in float32 (the bias gradient of dW = xᵀ dz, from b's
    packing on AMX): against float64 sums of the operand's values before rounding, added to what
    colsum held, the same at any thread count, the product itself unchanged; the reference too."""
    threads(nthreads)
    rng = np.random.default_rng(M * 31 + N * 7 + K)
    a, b = operands(rng, M, N, K, ta, tb, bf16)
    vals = (_cpu.from_bfloat16(b) if bf16 else b).astype(np.float64)
    want = (vals.T if tb else vals).sum(axis=0) + 0.5
    c, c_plain = np.empty((M, N), np.float32), np.empty((M, N), np.float32)
    for k in (_cpu, _cpu.ref):
        sums = np.full(N, 0.5, np.float32)
        k.gemm_bf16(a, b, c, ta, tb, colsum=sums)
        k.gemm_bf16(a, b, c_plain, ta, tb)
        np.testing.assert_array_equal(c, c_plain)
        # float32 sums of K values of size ~3: error ~ K * 2**-24 * sum |values|
        bound = 2e-7 * (K + 4) * ((np.abs(vals.T if tb else vals)).sum(axis=0) + 1)
        np.testing.assert_array_less(np.abs(sums - want), bound)
    threads(1)
    one = np.zeros(N, np.float32)
    _cpu.gemm_bf16(a, b, c, ta, tb, colsum=one)
    threads(2)
    two = np.zeros(N, np.float32)
    _cpu.gemm_bf16(a, b, c, ta, tb, colsum=two)
    np.testing.assert_array_equal(one, two)


def test_column_sums_bad_input():
    a = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="'colsum' must have shape"):
        _cpu.gemm_bf16(a, a.T.copy(), np.empty((4, 4), np.float32), colsum=np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="float32"):
        _cpu.gemm_bf16(a, a.T.copy(), np.empty((4, 4), np.float32), colsum=np.zeros(4, np.float64))
    with pytest.raises(ValueError, match="float32 'c' only"):
        _cpu.gemm_bf16(a, a.T.copy(), np.empty((4, 4), np.uint16), colsum=np.zeros(4, np.float32))
    c = np.empty((4, 4), np.float32)
    with pytest.raises(ValueError, match="colsum"):
        _cpu.gemm_bf16(a, a.T.copy(), c, colsum=c[0])


def test_bfloat16_output_bad_input():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    a, b = np.ones((4, 5), np.float32), np.ones((5, 6), np.float32)
    c = np.empty((4, 6), ml_dtypes.bfloat16)
    with pytest.raises(ValueError, match="alpha must be 1 and beta 0"):
        _cpu.gemm_bf16(a, b, c, beta=1.0)
    with pytest.raises(ValueError, match="alpha must be 1 and beta 0"):
        _cpu.gemm_bf16(a, b, c, alpha=2.0)
    with pytest.raises(ValueError, match="'c' must be 2-D"):
        _cpu.gemm_bf16(a, b, np.empty(24, ml_dtypes.bfloat16))
    with pytest.raises(ValueError, match="'c' must have shape"):
        _cpu.gemm_bf16(a, b, np.empty((4, 7), ml_dtypes.bfloat16))
    ro = np.empty((4, 6), ml_dtypes.bfloat16)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        _cpu.gemm_bf16(a, b, ro)


@pytest.mark.parametrize("nthreads", [1, 2])
def test_conversions_match_ml_dtypes(threads, nthreads):
    """float32 <-> bfloat16 over more than 2**18 values (the threaded split) with an odd tail:
    ml_dtypes' bits (round to nearest even, denormals kept, inf kept, NaN stays NaN)."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    threads(nthreads)
    rng = np.random.default_rng(4)
    n = (1 << 18) + 1037
    x = (rng.standard_normal(n) * 10.0 ** rng.integers(-44, 38, n)).astype(np.float32)
    x[:12] = [0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, 1e-40, 3.4e38, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8,
              np.nan, -np.nan]
    ours = _cpu.to_bfloat16(x)
    theirs = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    finite = ~np.isnan(x)
    np.testing.assert_array_equal(ours[finite], theirs[finite])
    assert np.isnan(_cpu.from_bfloat16(ours[~finite])).all()
    back = _cpu.from_bfloat16(ours)
    np.testing.assert_array_equal(back[finite], ours[finite].view(ml_dtypes.bfloat16).astype(np.float32))


@pytest.mark.parametrize("nthreads", [1, 2])
def test_add_bfloat16(threads, nthreads):
    """y = a + b on bfloat16 bits: the float32 sum rounded once (ml_dtypes' bits), any length
    (a masked tail), the threaded split, y in a's place; bad arguments named."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    threads(nthreads)
    rng = np.random.default_rng(6)
    for n in (1, 15, 17, 1000, (1 << 18) + 999):
        a = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 3, n)).astype(ml_dtypes.bfloat16)
        b = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 3, n)).astype(ml_dtypes.bfloat16)
        a[:3] = [np.inf, -np.inf, 3e38] if n >= 3 else a[:3]
        b[:3] = [1.0, 2.0, 3e38] if n >= 3 else b[:3]
        want = (a.astype(np.float32) + b.astype(np.float32)).astype(ml_dtypes.bfloat16)
        y = np.empty(n, ml_dtypes.bfloat16)
        _cpu.add_bfloat16(a, b, y)
        np.testing.assert_array_equal(y.view(np.uint16), want.view(np.uint16))
        _cpu.add_bfloat16(a, b, a)   # in place
        np.testing.assert_array_equal(a.view(np.uint16), want.view(np.uint16))
    m = np.ones((3, 4), ml_dtypes.bfloat16)
    with pytest.raises(TypeError, match="must be bfloat16"):
        _cpu.add_bfloat16(np.ones((3, 4), np.float32), m, m.copy())
    with pytest.raises(ValueError, match=r"'a' has shape \(3, 4\), 'b' \(4, 3\)"):
        _cpu.add_bfloat16(m, m.reshape(4, 3), m.copy())
    with pytest.raises(ValueError, match="'y' must have shape"):
        _cpu.add_bfloat16(m, m, np.empty((3, 5), ml_dtypes.bfloat16))
    with pytest.raises(TypeError, match="'y' must be a bfloat16 array"):
        _cpu.add_bfloat16(m, m, np.empty((3, 4), np.float32))


def test_reference_is_the_rounded_product():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((9, 13)).astype(np.float32), rng.standard_normal((13, 5)).astype(np.float32)
    r = np.zeros((9, 5), np.float32)
    _cpu.ref.gemm_bf16(a, b, r)
    np.testing.assert_allclose(r, rounded(a) @ rounded(b), rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed")
def test_rounding_matches_torch():
    import torch
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.standard_normal(10000).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 10000),
                        np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, 3.4e38, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8],
                                 np.float32)]).astype(np.float32)
    ours = _cpu.to_bfloat16(x)
    theirs = torch.from_numpy(x).bfloat16().view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours, theirs)
    nan = _cpu.to_bfloat16(np.array([np.nan, -np.nan], np.float32))
    assert np.isnan(_cpu.from_bfloat16(nan)).all()


def test_ml_dtypes_bfloat16_accepted():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(3)
    a32, b32 = rng.standard_normal((40, 50)).astype(np.float32), rng.standard_normal((50, 33)).astype(np.float32)
    a, b = a32.astype(ml_dtypes.bfloat16), b32.astype(ml_dtypes.bfloat16)
    c, r = np.empty((40, 33), np.float32), np.empty((40, 33), np.float32)
    _cpu.gemm_bf16(a, b, c)
    _cpu.gemm_bf16(_cpu.to_bfloat16(a32), _cpu.to_bfloat16(b32), r)
    np.testing.assert_array_equal(c, r)
    np.testing.assert_array_equal(_cpu.from_bfloat16(a), a.astype(np.float32))


def test_bad_input():
    a, b, c = np.ones((4, 5), np.float32), np.ones((5, 6), np.float32), np.ones((4, 6), np.float32)
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        _cpu.gemm_bf16(a.astype(np.float64), b, c)
    with pytest.raises(ValueError, match="inner dimensions"):
        _cpu.gemm_bf16(a, b.T.copy(), c)
    with pytest.raises(ValueError, match="'c' must have shape"):
        _cpu.gemm_bf16(a, b, np.ones((4, 7), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        _cpu.gemm_bf16(_cpu.to_bfloat16(np.ones(5, np.float32)), b, c)
    with pytest.raises(TypeError, match="uint16"):
        _cpu.from_bfloat16(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="bias"):
        _cpu.gemm_bf16(a, b, c, bias=np.ones(5, np.float32))


def test_level_and_fallback_in_subprocess():
    """KILNET_SIMD=avx2 turns AMX and AVX512-BF16 off: the float32 path answers, with the same numbers up to
    float32 summation order."""
    assert _cpu.bf16_level() in ("amx", "avx512bf16", "fp32")
    code = ("import numpy as np; from kilnet import _cpu; assert _cpu.bf16_level() == 'fp32';"
            "r = np.random.default_rng(0); a = r.standard_normal((37, 70)).astype(np.float32);"
            "b = r.standard_normal((70, 45)).astype(np.float32); c = np.empty((37, 45), np.float32);"
            "_cpu.gemm_bf16(a, b, c); import sys; sys.stdout.buffer.write(c.tobytes())")
    env = dict(os.environ, KILNET_SIMD="avx2" if _cpu.machine_simd_level() != "scalar" else "scalar")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    c_fp32 = np.frombuffer(out.stdout, np.float32).reshape(37, 45)
    r = np.random.default_rng(0)
    a = r.standard_normal((37, 70)).astype(np.float32)
    b = r.standard_normal((70, 45)).astype(np.float32)
    c = np.empty((37, 45), np.float32)
    _cpu.gemm_bf16(a, b, c)
    np.testing.assert_allclose(c, c_fp32, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("want", ["avx512bf16", "fp32", "bogus"])
def test_kilnet_bf16_lowers_the_level(want):
    """KILNET_BF16 lowers the bfloat16 level, never raises it (on a machine with AMX the tests
    reach the VDPBF16PS kernel this way: .ci/simd_levels.sh runs this file again under it), and
    the lowered kernel still matches the reference; an unknown value is ignored, with a warning."""
    order = ["fp32", "avx512bf16", "amx"]
    have = _cpu.bf16_level()
    expect = have if want == "bogus" else order[min(order.index(want), order.index(have))]
    code = ("import warnings; warnings.simplefilter('always')\n"
            "import numpy as np; from kilnet import _cpu\n"
            "r = np.random.default_rng(3); err = 0.0\n"
            "for ta in (False, True):\n"
            "    for tb in (False, True):\n"
            "        M, N, K = 100, 300, 1030\n"
            "        a = r.standard_normal((K, M) if ta else (M, K)).astype(np.float32)\n"
            "        b = r.standard_normal((N, K) if tb else (K, N)).astype(np.float32)\n"
            "        bias = r.standard_normal(N).astype(np.float32)\n"
            "        c = np.empty((M, N), np.float32); ref = np.empty((M, N), np.float32)\n"
            "        _cpu.gemm_bf16(a, b, c, ta, tb, bias=bias); _cpu.ref.gemm_bf16(a, b, ref, ta, tb, bias=bias)\n"
            "        err = max(err, float(np.abs(c - ref).max()))\n"
            "print(_cpu.bf16_level(), err < 2e-7 * 1034 * 1100)")
    env = dict(os.environ, KILNET_BF16=want)
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [expect, "True"], out.stdout
    assert ("KILNET_BF16='bogus' is not one of" in out.stderr) == (want == "bogus"), out.stderr
