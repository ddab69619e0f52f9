"""Runtime SIMD dispatch: the level in use, KILNET_SIMD lowering it (never raising it), the
measured FMA peak at each level."""
import os
import subprocess
import sys

import pytest

from kilnet import _cpu

LEVELS = ["scalar", "avx2", "avx512"]
MACHINE = _cpu.machine_simd_level()
AVAILABLE = LEVELS[: LEVELS.index(MACHINE) + 1]


def _level_in_child(value):
    env = dict(os.environ)
    env.pop("KILNET_SIMD", None)
    if value is not None:
        env["KILNET_SIMD"] = value
    r = subprocess.run([sys.executable, "-W", "ignore", "-c",
                        "from kilnet import _cpu; print(_cpu.simd_level(), _cpu.machine_simd_level())"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_level_names():
    assert _cpu.simd_level() in LEVELS and MACHINE in LEVELS
    assert LEVELS.index(_cpu.simd_level()) <= LEVELS.index(MACHINE)
    assert ("machine=" + MACHINE) in _cpu.build_info()


@pytest.mark.parametrize("want", LEVELS)
def test_kilnet_simd_lowers_never_raises(want):
    used, machine = _level_in_child(want)
    assert machine == MACHINE
    expect = want if LEVELS.index(want) <= LEVELS.index(MACHINE) else MACHINE
    assert used == expect


def test_default_is_the_machine_level():
    assert _level_in_child(None) == [MACHINE, MACHINE]


def test_kilnet_simd_above_the_machine_warns():
    if MACHINE == "avx512":
        pytest.skip("this machine runs every level")
    env = dict(os.environ, KILNET_SIMD="avx512")
    r = subprocess.run([sys.executable, "-c", "import kilnet"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "above what this machine" in r.stderr


@pytest.mark.parametrize("level", AVAILABLE)
def test_peak_per_level(level):
    if LEVELS.index(level) > LEVELS.index(_cpu.simd_level()):
        pytest.skip("KILNET_SIMD lowered the level in use")
    g = _cpu.fma_peak_gflops(1, 0.02, level)
    assert 0 < g < 1e5


def test_peak_levels_are_ordered():
    """Wider vectors never fewer flops, and 8-lane AVX2 far above scalar code.

    AVX-512 over AVX2 is a property of the core, not of our code: Intel cores with two 512-bit
    FMA ports double it, AMD Zen 4 issues a 512-bit FMA as two 256-bit halves (CI measured
    101 vs 84 GFLOP/s there), so only "not slower" is asserted between those two."""
    used = LEVELS.index(_cpu.simd_level())
    peaks = [max(_cpu.fma_peak_gflops(1, 0.05, lv) for _ in range(3)) for lv in LEVELS[: used + 1]]
    if len(peaks) > 1:
        assert peaks[1] > 3 * peaks[0], peaks
    if len(peaks) > 2:
        assert peaks[2] > 0.8 * peaks[1], peaks


@pytest.mark.parametrize("kwargs,match", [
    (dict(simd="avx9"), "simd must be"),
    (dict(threads=200000), "threads must be"),
    (dict(threads=0), "threads must be"),
])
def test_peak_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _cpu.fma_peak_gflops(**kwargs)


def test_peak_above_the_level_in_use_is_refused():
    if _cpu.simd_level() == "avx512":
        pytest.skip("nothing is above avx512")
    with pytest.raises(ValueError, match="above the level in use"):
        _cpu.fma_peak_gflops(1, 0.01, "avx512")


def test_bf16_dot_peak():
    """The VDPBF16PS peak where the CPU has AVX512-BF16 (two multiply-adds per float32 lane: Zen 4
    measured 233 vs 117 GFLOP/s of float32 FMAs per core; a Xeon that issues it on one port where
    it has two FMA ports gets about the FMA rate, so only the order of magnitude is asserted); a
    clear error elsewhere."""
    if not _cpu.cpu_has_avx512bf16():
        with pytest.raises(RuntimeError, match="no AVX512-BF16"):
            _cpu.bf16_dot_peak_gflops(1, 0.01)
        return
    dot = max(_cpu.bf16_dot_peak_gflops(1, 0.05) for _ in range(3))
    fma = max(_cpu.fma_peak_gflops(1, 0.05, "avx512") for _ in range(3))
    assert 0.4 * fma < dot < 4 * fma, (dot, fma)
    with pytest.raises(ValueError, match="threads"):
        _cpu.bf16_dot_peak_gflops(0, 0.01)
    with pytest.raises(ValueError, match="seconds"):
        _cpu.bf16_dot_peak_gflops(1, 0.0)
