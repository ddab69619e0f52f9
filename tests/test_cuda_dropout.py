"""kilnet._cuda dropout: for the same seed the mask and the output are bit-identical to the CPU's
(kilnet._cpu and kilnet._cpu.ref: the mask is a counter-based hash of (seed, index)), on odd
sizes, misaligned views, in place, for any seed (64-bit ones too); backward is dy * mask."""
import numpy as np
import pytest

from kilnet import _cpu

pytestmark = pytest.mark.cuda

SIZES = [1, 3, 4, 17, 33, 65, 129, 1000, 100003]
SEEDS = [0, 1, 987654321, 2**63 + 12345, 2**64 - 1]


def cpu_dropout(K, x, rate, seed):
    mask, y = np.empty_like(x), np.empty_like(x)
    K.dropout_forward(x, mask, y, rate, seed)
    return mask, y


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_dropout_bit_identical_to_cpu(gpu, n, rate):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    for seed in SEEDS:
        mask, y = gpu.poisoned(n), gpu.poisoned(n)
        gpu.k.dropout_forward(gpu.dev(x), mask, y, rate, seed)
        m_cpu, y_cpu = cpu_dropout(_cpu, x, rate, seed)
        m_ref, y_ref = cpu_dropout(_cpu.ref, x, rate, seed)
        np.testing.assert_array_equal(gpu.host(mask), m_cpu)
        np.testing.assert_array_equal(gpu.host(y), y_cpu)
        np.testing.assert_array_equal(gpu.host(mask), m_ref)
        np.testing.assert_array_equal(gpu.host(y), y_ref)


def test_dropout_misaligned_in_place_and_backward(gpu):
    n = 10007
    x = np.random.default_rng(1).standard_normal(n + 1).astype(np.float32)
    m_cpu, y_cpu = cpu_dropout(_cpu, x[1:].copy(), 0.3, 42)
    xd = gpu.dev(x)
    mask, y = gpu.poisoned(n + 1), gpu.poisoned(n + 1)
    gpu.k.dropout_forward(xd[1:], mask[1:], y[1:], 0.3, 42)    # views one float in: scalar path
    np.testing.assert_array_equal(gpu.host(mask)[1:], m_cpu)
    np.testing.assert_array_equal(gpu.host(y)[1:], y_cpu)
    assert np.isnan(gpu.host(y)[0]) and np.isnan(gpu.host(mask)[0])
    z = gpu.dev(x[1:].copy())
    m2 = gpu.poisoned(n)
    gpu.k.dropout_forward(z, m2, z, 0.3, 42)                   # in place
    np.testing.assert_array_equal(gpu.host(z), y_cpu)
    dy = np.random.default_rng(2).standard_normal(n).astype(np.float32)
    dx_cpu = np.empty_like(dy)
    _cpu.dropout_backward(m_cpu, dy, dx_cpu)
    dx = gpu.poisoned(n)
    gpu.k.dropout_backward(m2, gpu.dev(dy), dx)
    np.testing.assert_array_equal(gpu.host(dx), dx_cpu)
    d = gpu.dev(dy)
    gpu.k.dropout_backward(m2, d, d)                           # dx is dy
    np.testing.assert_array_equal(gpu.host(d), dx_cpu)
    d2 = gpu.poisoned(n + 1)
    gpu.k.dropout_backward(m2, gpu.dev(dy), d2[1:])            # misaligned output
    np.testing.assert_array_equal(gpu.host(d2)[1:], dx_cpu)


def test_dropout_statistics_and_any_rank(gpu):
    x = gpu.cp.ones((64, 33, 17), np.float32)
    mask, y = gpu.poisoned(x.shape), gpu.poisoned(x.shape)
    gpu.k.dropout_forward(x, mask, y, 0.25, 7)
    m = gpu.host(mask)
    assert set(np.unique(m)) <= {0.0, np.float32(1 / 0.75)}
    assert abs((m > 0).mean() - 0.75) < 0.01
    m_cpu, _ = cpu_dropout(_cpu, np.ones(x.shape, np.float32), 0.25, 7)
    np.testing.assert_array_equal(m, m_cpu)


def test_dropout_bad_input(gpu):
    k, cp = gpu.k, gpu.cp
    x, m, y = cp.ones(10, np.float32), cp.empty(10, np.float32), cp.empty(10, np.float32)
    for rate in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="rate"):
            k.dropout_forward(x, m, y, rate, 1)
    with pytest.raises(ValueError, match="overlaps"):
        k.dropout_forward(x, x, y, 0.5, 1)
    with pytest.raises(ValueError, match="shape"):
        k.dropout_forward(x, m[:5], y, 0.5, 1)
    with pytest.raises(TypeError, match="CuPy"):
        k.dropout_forward(np.ones(10, np.float32), m, y, 0.5, 1)
    with pytest.raises(TypeError, match="float32"):
        k.dropout_forward(x.astype(cp.float64), m, y, 0.5, 1)
    with pytest.raises(ValueError, match="contiguous"):
        k.dropout_forward(cp.ones(20, np.float32)[::2], m, y, 0.5, 1)
    with pytest.raises(ValueError, match="overlaps"):
        k.dropout_backward(m, y, m)
    with pytest.raises(TypeError, match="CuPy"):
        k.dropout_backward(m, np.ones(10, np.float32), y)
