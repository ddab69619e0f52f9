"""Issue 23, kilnet next to other libraries' thread pools: kilnet.utils.blas_threads and the fair
timing behind `kilnet bench` (rotation, idle pools, stall detector, one process per library). Speed is measured in
benchmarks/bench_neighbours.py, never asserted here."""
import os
import subprocess
import sys

import numpy as np
import pytest

from kilnet import bench, fair_timing
from kilnet.utils import blas_threads

threadpoolctl = pytest.importorskip("threadpoolctl")


def _blas_counts():
    return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]


# ---- blas_threads --------------------------------------------------------------------------------

def test_blas_threads_limits_and_restores():
    before = _blas_counts()
    if not before:
        pytest.skip("numpy has no BLAS library that threadpoolctl can see")
    with blas_threads(1):
        assert _blas_counts() == [1] * len(before)
        a = np.ones((64, 64), np.float32)
        assert float((a @ a)[0, 0]) == 64.0
    assert _blas_counts() == before
    with pytest.raises(RuntimeError, match="inside"):
        with blas_threads(1):
            raise RuntimeError("inside")
    assert _blas_counts() == before   # put back after an exception too


def test_blas_threads_nests():
    before = _blas_counts()
    if not before:
        pytest.skip("numpy has no BLAS library that threadpoolctl can see")
    with blas_threads(2):
        with blas_threads(1):
            assert _blas_counts() == [1] * len(before)
        assert _blas_counts() == [2] * len(before)   # the outer block's limit is back
    assert _blas_counts() == before


def test_blas_threads_leaves_kilnet_threads_alone():
    import kilnet
    n = kilnet.get_num_threads()
    with blas_threads(1):
        assert kilnet.get_num_threads() == n


@pytest.mark.parametrize("bad, err", [(0, ValueError), (-2, ValueError), (1.5, TypeError), ("2", TypeError),
                                      (True, TypeError), (None, TypeError)])
def test_blas_threads_bad_n(bad, err):
    with pytest.raises(err, match="blas_threads"):
        with blas_threads(bad):
            pass


def test_blas_threads_without_threadpoolctl(monkeypatch):
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)   # import fails as if not installed
    with pytest.raises(ImportError, match="pip install threadpoolctl"):
        with blas_threads(1):
            pass


# ---- fair timing ------------------------------------------------------------------------------------

def test_spread_and_stall_detector():
    assert fair_timing.spread([2.0]) == 1.0
    assert fair_timing.spread([1.0, 3.0, 2.0]) == 3.0
    assert not fair_timing.stalled([1.0, 1.2, 1.1])
    assert fair_timing.stalled([1.0, 1.2, 50.0])            # one round stalled 50x
    assert not fair_timing.stalled([1.0, 1.6], limit=2.0)
    assert fair_timing.stalled([1.0, 1.6]) == (1.6 > fair_timing.STALL_SPREAD)
    with pytest.raises(ValueError, match="positive"):
        fair_timing.spread([1.0, 0.0])
    with pytest.raises(ValueError, match="limit"):
        fair_timing.stalled([1.0, 2.0], limit=1.0)


def test_rotate_gives_every_library_every_place():
    libs = ["kilnet", "numpy", "torch"]
    orders = [fair_timing.rotate(libs, r) for r in range(3)]
    assert orders[0] == libs and fair_timing.rotate(libs, 3) == libs
    for place in range(3):
        assert sorted(o[place] for o in orders) == sorted(libs)
    assert fair_timing.rotate([], 5) == []


def test_wait_idle_sees_openblas_spinning_workers():
    """Right after a multi-threaded numpy product OpenBLAS's worker is still running (spinning);
    wait_idle returns once it has gone to sleep."""
    if fair_timing.busy_threads() is None:
        pytest.skip("no /proc/self/task here")
    assert fair_timing.wait_idle(timeout=2.0) in (True, False)
    a = np.ones((512, 512), np.float32)
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        if (os.cpu_count() or 1) >= 2 and max(_blas_counts() or [1]) >= 2:
            for _ in range(3):
                a @ a
            assert fair_timing.busy_threads(), "OpenBLAS's worker should still be spinning"
    assert fair_timing.wait_idle(timeout=5.0) is True   # OpenBLAS: asleep after about 0.13 s


def test_median_seconds_counts_calls():
    calls = []
    t = fair_timing.median_seconds(lambda: calls.append(1), warm=2, min_reps=4, budget=0.0, max_reps=4)
    assert len(calls) == 6 and t >= 0


# ---- kilnet bench -----------------------------------------------------------------------------------

def test_bench_table_flags_stalled_rows():
    case = bench.Case("gemm", "toy", kilnet=None, work=1e6)
    samples = {(0, "kilnet"): [1e-3, 1.1e-3, 1.05e-3], (0, "numpy"): [1e-3, 9e-3, 1e-3]}
    lines, rows = [], []
    bench._table(1, ([case], samples), 100.0, True, rows, lines.append)
    row = next(l for l in lines if l.startswith("gemm"))
    assert row.split()[2] == "1.050"   # the median of kilnet's round medians, not flagged
    assert "1.000!" in row   # numpy's round medians spread 9x
    assert rows[0]["stalled"] == ["numpy"] and rows[0]["spread"]["numpy"] == pytest.approx(9.0)
    assert any(l.startswith("! stall") for l in lines)
    lines.clear()
    bench._table(1, ([case], {(0, "kilnet"): [1e-3, 1.1e-3]}), 100.0, False, [], lines.append)
    assert not any(l.startswith("! stall") for l in lines)
    assert any("still running" in l for l in lines)


def test_bench_noisy_rows_get_more_rounds_in_turns():
    """Rounds rotate the libraries' order; only the case whose times spread gets extra rounds,
    one sample per library per round (the paired ratio needs them aligned)."""
    calls = []

    def time_one(i, lib):
        calls.append((i, lib))
        if i == 1 and lib == "numpy":   # case 1's numpy time jumps 3x every other round
            return 3e-3 if len([c for c in calls if c == (1, "numpy")]) % 2 else 1e-3
        return 1e-3
    libs = ["kilnet", "numpy", "torch"]
    can = lambda i, lib: not (i == 0 and lib == "torch")
    samples = bench._take_turns(3, libs, can, 3, time_one)
    assert [len(samples[(i, lib)]) for i in range(3) for lib in libs if can(i, lib)] == [3, 3, 6, 6, 6, 3, 3, 3]
    assert calls[:2] == [(0, "kilnet"), (0, "numpy")] and calls[2:5] == [(1, "numpy"), (1, "torch"), (1, "kilnet")]
    assert bench._paired_ratio(samples[(1, "torch")], samples[(1, "kilnet")]) == 1.0
    assert bench._paired_ratio([2e-3, 4e-3, 2e-3], [1e-3, 2e-3, 1e-3]) == 2.0   # a slow round for both cancels
    assert bench._paired_ratio(None, [1e-3]) is None


def test_bench_per_process_quick(monkeypatch, capsys):
    """--per-process: every library in a process of its own, asked for one case at a time (torch
    left out here to keep the test short)."""
    real = bench._import_peer
    monkeypatch.setattr(bench, "_import_peer", lambda name: None if name == "torch" else real(name))
    rows = bench.run(threads=["1"], quick=True, only="activation,gemm", per_process=True, rounds=2)
    out = capsys.readouterr().out
    assert "a process per library, libraries alternating case by case" in out and "2 rounds" in out
    assert {r["family"] for r in rows} == {"activation", "gemm"} and len(rows) == 5
    assert all(r["kilnet_s"] > 0 and r["numpy_s"] > 0 and r["torch_s"] is None for r in rows)
    assert all(set(r["spread"]) == {"kilnet", "numpy"} for r in rows)
    assert rows[0]["peak_gflops"] > 0


def test_bench_worker_rejects_bad_arguments():
    r = subprocess.run([sys.executable, "-m", "kilnet.bench", "--worker", "jax", "--threads", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "invalid choice" in r.stderr


# ---- one OpenMP runtime shared with PyTorch ------------------------------------------------------

_SHARED_RUNTIME = r"""
import numpy as np, sys
import kilnet
from kilnet import _cpu
import torch
sys.path.insert(0, sys.argv[1])
from test_conv_dense import CASES, _arrays, _run
x, wc, bc, wd, bd, dz, geo = _arrays(CASES[0], seed=3)
kilnet.set_num_threads(1)
one = _run(_cpu, x, wc, bc, wd, bd, dz, geo)
kilnet.set_num_threads(2)
two = _run(_cpu, x, wc, bc, wd, bd, dz, geo)
torch.set_num_threads(1)                      # torch's libgomp.so.1 is kilnet's too
after = _run(_cpu, x, wc, bc, wd, bd, dz, geo)
assert _cpu.get_num_threads() == 2, _cpu.get_num_threads()
assert torch.get_num_threads() == 1, torch.get_num_threads()   # kilnet's call left torch's count
# the fused kernel's partial sums follow the thread count: after torch's call it still ran on 2
assert any(not np.array_equal(a, b) for a, b in zip(one, two)), "1 and 2 threads agree bitwise here"
assert all(np.array_equal(a, b) for a, b in zip(two, after))
torch.set_num_threads(2)
kilnet.set_num_threads(1)
assert torch.get_num_threads() == 2 and _cpu.get_num_threads() == 1
print("ok")
"""


def test_kilnet_and_torch_thread_counts_are_independent():
    """PyTorch's wheel ships libgomp.so.1, so a process holds one OpenMP runtime for both:
    torch.set_num_threads(1) used to drop kilnet's kernels to one thread, and kilnet's set_num_threads
    changed torch's. Each library now keeps its own count (in a child: it sets torch's)."""
    pytest.importorskip("torch")
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 cores to tell 1 thread from 2")
    here = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run([sys.executable, "-c", _SHARED_RUNTIME, here], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def test_worker_env_runs_other_libraries_with_the_system_allocator():
    """A torch or numpy worker that imports kilnet for the timing helpers must not run with the
    allocator policy kilnet sets at import (the yardstick is that library as its users run it)."""
    base = {"PATH": "/bin", "KILNET_MALLOC": "x"}
    assert fair_timing.worker_env("torch", 2, base) == {"PATH": "/bin", "KILNET_MALLOC": "system",
                                                          "OMP_NUM_THREADS": "2"}
    assert fair_timing.worker_env("numpy", None, base)["KILNET_MALLOC"] == "system"
    assert fair_timing.worker_env("kilnet", 1, base) == {"PATH": "/bin", "KILNET_MALLOC": "x", "OMP_NUM_THREADS": "1"}
    assert fair_timing.worker_env("kilnet-bf16", None, {})  == {}
