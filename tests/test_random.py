"""kilnet's counter-based normal stream (kilnet/random.h): Philox4x32-10 against Random123's
published vectors, normal_fill against the C++ reference and an independent numpy version of the
stream, the same bits at every thread count and SIMD level, the distribution, bad input."""
import hashlib

import numpy as np
import pytest

from kilnet import _cpu

M0, M1, W0, W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85

# Random123's tests/kat_vectors for philox4x32_10: (counter, key, output)
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,want", KAT)
def test_philox_known_answers(ctr, key, want):
    assert tuple(_cpu.philox4x32_10(list(ctr), list(key))) == want
    assert tuple(int(w[0]) for w in _philox_np(np.array([ctr], np.uint64).T, key)) == want


def _philox_np(c, key):
    """Philox4x32-10 of the counters in the columns of c (4 x m, uint64 holding 32-bit words)."""
    c0, c1, c2, c3 = (np.array(w, np.uint64) for w in c)
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    mask = np.uint64(0xFFFFFFFF)
    for r in range(10):
        if r:
            k0, k1 = (k0 + np.uint64(W0)) & mask, (k1 + np.uint64(W1)) & mask
        p0, p1 = c0 * np.uint64(M0), c2 * np.uint64(M1)
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ k0), p1 & mask, ((p0 >> np.uint64(32)) ^ c3 ^ k1), p0 & mask
    return c0, c1, c2, c3


def _stream_np(n, key, counter):
    """The stream of random.h computed in numpy float64 (independent of the C++ reference)."""
    j = np.arange(n, dtype=np.uint64)
    c = np.uint64(counter) + np.uint64(16) * (j // np.uint64(32)) + j % np.uint64(16)
    words = (c & np.uint64(0xFFFFFFFF), c >> np.uint64(32), np.zeros(n, np.uint64), np.zeros(n, np.uint64))
    w0, w1, w2, _ = _philox_np(words, (key & 0xFFFFFFFF, key >> 32))
    bits = (w0 << np.uint64(20)) | (w1 >> np.uint64(12))
    u = (bits.astype(np.float64) + 0.5) * 2.0 ** -52
    r = np.sqrt(-2.0 * np.log(u))
    t = 2 * np.pi * w2.astype(np.float64) * 2.0 ** -32
    return np.where(j % np.uint64(32) < np.uint64(16), r * np.cos(t), r * np.sin(t))


@pytest.mark.parametrize("n,key,counter", [(0, 1, 0), (1, 0, 0), (31, 5, 3), (32, 2 ** 64 - 1, 0),
                                           (33, 0x243F6A8885A308D3, 2 ** 32 - 20), (1000, 7, 2 ** 63),
                                           (4099, 99, 12345)])
def test_matches_the_reference_and_numpy(n, key, counter):
    got = np.full(n, np.nan, np.float32)
    _cpu.normal_fill(got, key, counter)
    ref = np.full(n, np.nan, np.float32)
    _cpu.ref.normal_fill(ref, key, counter)
    want = _stream_np(n, key, counter)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(ref, want, rtol=2e-6, atol=2e-6)


def test_a_pure_function_of_key_counter_and_index():
    a = np.empty(10_000, np.float32)
    _cpu.normal_fill(a, 42, 1000)
    b = np.empty(10_000 - 32 * 7, np.float32)   # 7 blocks later: counter + 16 * 7
    _cpu.normal_fill(b, 42, 1000 + 16 * 7)
    assert np.array_equal(a[32 * 7:], b)
    c = np.empty(777, np.float32)   # a shorter fill is a prefix
    _cpu.normal_fill(c, 42, 1000)
    assert np.array_equal(a[:777], c)
    d = np.empty((10, 1000), np.float32)   # any shape: the flat order
    _cpu.normal_fill(d, 42, 1000)
    assert np.array_equal(d.ravel(), a)
    e = np.empty(10_000, np.float32)
    _cpu.normal_fill(e, 43, 1000)   # another key: unrelated values
    assert abs(np.corrcoef(a, e)[0, 1]) < 0.05


def test_the_same_bits_at_every_thread_count_and_simd_level():
    """One source compiled per SIMD level without fused multiply-adds (random_kernel.h): the
    digest below is the same at avx512, avx2 and scalar (.ci/simd_levels.sh reruns this file
    at the lower levels) and at any thread count."""
    old = _cpu.get_num_threads()
    digests = set()
    try:
        for t in (1, 2):
            _cpu.set_num_threads(t)
            z = np.empty(300_007, np.float32)   # above the size that uses a second thread
            _cpu.normal_fill(z, 2024, 5)
            digests.add(hashlib.sha256(z.tobytes()).hexdigest()[:16])
    finally:
        _cpu.set_num_threads(old)
    assert digests == {PINNED}, (digests, _cpu.simd_level())


# sha256 prefix of normal_fill(300_007 values, key 2024, counter 5), the same at avx512, avx2
# and scalar on a Zen 4 (2026-12-07, the logarithm in single precision) and at 1 and 2 threads
PINNED = "51d0e23bd268c6b4"


def test_standard_normal():
    z = np.empty(2_000_003, np.float32)
    _cpu.normal_fill(z, 11, 0)
    z = z.astype(np.float64)
    assert abs(z.mean()) < 5 / np.sqrt(z.size)
    assert abs(z.var() - 1) < 0.005
    # quantiles: P(|z| > k) for k = 1, 2, 3, 4
    for k, p in ((1, 0.31731), (2, 0.045500), (3, 0.0026998), (4, 6.3342e-05)):
        assert abs((np.abs(z) > k).mean() - p) < 5 * np.sqrt(p * (1 - p) / z.size)
    # Kolmogorov-Smirnov distance to the normal CDF (critical value at 1e-3: 1.95 / sqrt(n))
    from math import erf
    s = np.sort(z[:200_000])
    cdf = 0.5 * (1 + np.vectorize(erf)(s / np.sqrt(2)))
    i = np.arange(1, s.size + 1) / s.size
    assert max(np.abs(cdf - i).max(), np.abs(cdf - (i - 1 / s.size)).max()) < 1.95 / np.sqrt(s.size)
    # skewness and kurtosis; the cosine and sine halves of each block (same radii) uncorrelated
    assert abs((z ** 3).mean()) < 0.01 and abs((z ** 4).mean() - 3) < 0.03
    blocks = z[:2_000_000].reshape(-1, 32)
    assert abs(np.corrcoef(blocks[:, :16].ravel(), blocks[:, 16:].ravel())[0, 1]) < 0.005


def test_tails_reach_far():
    """Double-precision radii: u down to 2^-53, so |z| can exceed 6.7 (the limit with 32-bit
    uniforms); 2^25 draws reach past 5 sigma (P(|z| > 5) = 5.7e-7: ~19 expected)."""
    z = np.empty(1 << 25, np.float32)
    _cpu.normal_fill(z, 3, 0)
    assert np.isfinite(z).all()
    assert 5 < np.abs(z).max() < 8.6


@pytest.mark.parametrize("bad,match", [(np.zeros(5, np.float64), "float32"),
                                       (np.zeros((4, 4), np.float32)[:, ::2], "contiguous"),
                                       ([0.0, 1.0], "array")])
def test_bad_arrays_name_the_problem(bad, match):
    with pytest.raises((TypeError, ValueError), match=match):
        _cpu.normal_fill(bad, 1, 0)


def test_bad_key_or_counter():
    z = np.empty(4, np.float32)
    with pytest.raises(TypeError):
        _cpu.normal_fill(z, -1, 0)
    with pytest.raises(TypeError):
        _cpu.normal_fill(z, 1, 2 ** 64)


def test_scale_and_add():
    """out = scale * z, or out += scale * z, with float32's rounding of z * scale then the sum
    (what the DP step did in numpy before)."""
    n = 5_003
    z = np.empty(n, np.float32)
    _cpu.normal_fill(z, 77, 9)
    base = np.linspace(-3, 3, n).astype(np.float32)
    for mod in (_cpu, _cpu.ref):
        scaled = np.empty(n, np.float32)
        mod.normal_fill(scaled, 77, 9, 1.7)
        added = base.copy()
        mod.normal_fill(added, 77, 9, 1.7, True)
        if mod is _cpu:
            assert np.array_equal(scaled, z * np.float32(1.7))
            assert np.array_equal(added, base + z * np.float32(1.7))
        else:
            np.testing.assert_allclose(added, base + z * np.float32(1.7), rtol=1e-5, atol=1e-5)
