"""`kilnet bench` and the FMA peak probe behind it. Performance is measured, never asserted here:
these tests check that the probe answers, that every family prints a row, and that the command
works without PyTorch."""
import math
import os
import subprocess
import sys

import pytest

from kilnet import _cpu, bench
from kilnet.cli import main


def test_fma_peak_is_positive_and_finite():
    g = _cpu.fma_peak_gflops(1, 0.02)
    assert math.isfinite(g) and g > 0
    assert _cpu.fma_peak_gflops(threads=2, seconds=0.02) > 0
    assert not hasattr(_cpu.ref, "fma_peak_gflops")   # no reference variant


@pytest.mark.parametrize("kwargs", [{"threads": 0}, {"threads": -1}, {"seconds": 0.0}, {"seconds": -1.0},
                                    {"seconds": 10.5}, {"seconds": float("nan")}])
def test_fma_peak_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="fma_peak_gflops"):
        _cpu.fma_peak_gflops(**kwargs)


def test_fma_peak_portable_path():
    """KILNET_SIMD=scalar: the portable multiply-add chains answer too."""
    code = "from kilnet import _cpu; assert _cpu.simd_level() == 'scalar'; print(_cpu.fma_peak_gflops(1, 0.02))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "KILNET_SIMD": "scalar"})
    assert r.returncode == 0, r.stderr
    assert float(r.stdout) > 0


def _rows(text):
    """family -> number of table rows, and the peaks printed."""
    fams, peaks = {}, []
    for line in text.splitlines():
        word = line.split(" ", 1)[0]
        if word in bench.FAMILIES:
            fams[word] = fams.get(word, 0) + 1
        if "measured FMA peak" in line:
            peaks.append(float(line.split("measured FMA peak")[1].split()[0]))
    return fams, peaks


def test_bench_quick_prints_every_family(capsys):
    before = _cpu.get_num_threads()
    assert main(["bench", "--quick", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    fams, peaks = _rows(out)
    assert set(fams) == set(bench.FAMILIES), out
    assert len(peaks) == 1 and peaks[0] > 0
    assert "SIMD " + _cpu.simd_level() in out
    assert _cpu.get_num_threads() == before   # the run puts the thread count back


def test_bench_only_gemm_subprocess():
    r = subprocess.run([sys.executable, "-m", "kilnet", "bench", "--quick", "--threads", "1", "--only", "gemm"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    fams, peaks = _rows(r.stdout)
    assert set(fams) == {"gemm"} and fams["gemm"] >= 4, r.stdout
    assert peaks and peaks[0] > 0


def test_bench_without_torch(monkeypatch, capsys):
    real = bench._import_peer
    monkeypatch.setattr(bench, "_import_peer", lambda name: None if name == "torch" else real(name))
    rows = bench.run(threads=["1"], quick=True, only="activation,adam,train_step")
    out = capsys.readouterr().out
    assert {r["family"] for r in rows} == {"activation", "adam", "train_step"}
    assert all(r["torch_s"] is None and r["kilnet_s"] > 0 for r in rows)
    assert all(r["numpy_s"] > 0 for r in rows if r["family"] in ("activation", "adam"))
    assert "torch -" in out


def test_bench_bad_options(capsys):
    assert main(["bench", "--only", "nosuch"]) == 2
    assert "unknown family nosuch" in capsys.readouterr().err
    assert main(["bench", "--threads", "0"]) == 2


def test_info_prints_levels_and_peaks():
    """kilnet info: the level in use, the machine's best, and the measured peak of each level
    this process can run (a lowered level says the ones above it were not measured)."""
    levels = ["scalar", "avx2", "avx512"]
    for env_level in (None, "scalar"):
        env = {k: v for k, v in os.environ.items() if k != "KILNET_SIMD"}
        if env_level:
            env["KILNET_SIMD"] = env_level
        r = subprocess.run([sys.executable, "-W", "ignore", "-m", "kilnet", "info"], capture_output=True,
                           text=True, timeout=60, env=env)
        assert r.returncode == 0, r.stderr
        lines = {l.split(":", 1)[0]: l.split(":", 1)[1] for l in r.stdout.splitlines() if ":" in l}
        machine = _cpu.machine_simd_level()
        used = env_level or machine
        assert lines["simd level in use"].split()[0] == used
        assert lines["machine simd level"].strip() == machine
        peaks = lines["measured FMA peak, 1 thread"]
        for lv in levels[:levels.index(used) + 1]:
            value = float(peaks.split(lv + " ", 1)[1].split(",")[0].split()[0])
            assert value > 0, r.stdout
        if used != machine:
            assert "not measured, above the level in use" in peaks
        assert "cpu" in lines and "flags" in lines["cpu"]


def test_bench_peak_is_measured_at_the_level_in_use():
    """KILNET_SIMD lowers the kernels, and "% peak" divides by the peak of that level (measured,
    in this run), not the machine's best; the header names the CPU's SIMD flags."""
    env = {k: v for k, v in os.environ.items() if k != "KILNET_SIMD"}
    env["KILNET_SIMD"] = "scalar"
    r = subprocess.run([sys.executable, "-W", "ignore", "-m", "kilnet", "bench", "--quick", "--threads", "1",
                        "--only", "gemm"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert "CPU flags" in r.stdout and "kilnet SIMD scalar" in r.stdout, r.stdout
    if _cpu.machine_simd_level() != "scalar":
        assert "lowered by KILNET_SIMD" in r.stdout
    _, peaks = _rows(r.stdout)
    assert peaks and 0 < peaks[0], r.stdout
    assert "GFLOP/s (scalar," in r.stdout, r.stdout
    if _cpu.simd_level() == _cpu.machine_simd_level() != "scalar":
        # the portable multiply-add chains are far below this process's vector peak
        assert peaks[0] < 0.5 * max(_cpu.fma_peak_gflops(1, 0.02) for _ in range(5))
