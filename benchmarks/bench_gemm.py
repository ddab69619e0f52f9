"""SGEMM: kilnet._cpu.gemm vs numpy (OpenBLAS) vs PyTorch (MKL/oneDNN), in one process, at 1
and 2 threads, on square sizes and the shapes the canonical model runs (Dense forward, weight
gradient X^T·dY, input gradient dY·W^T; conv-as-GEMM forward and weight gradient).

    python benchmarks/bench_gemm.py [--threads 1 2] [--rounds 7] [--only dense]
    pytest benchmarks/bench_gemm.py --benchmark-only

Reports the median time per call, GFLOP/s, % of the FMA peak of n threads measured at the start
of the run (kilnet._cpu.fma_peak_gflops at the SIMD level in use, machine_info.py) and the speed
ratio kilnet/other (> 1: kilnet faster).
The script interleaves the libraries round by round, in an order that rotates every round, and
starts each library's block only once the other pools' idle workers stopped spinning
(kilnet.fair_timing.wait_idle; they would steal the second core); a row whose round medians
spread by more than fair_timing.STALL_SPREAD is flagged "! stall" (issue 23).

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, when set in the environment, pin OpenBLAS to a slower
kernel; the script re-executes itself without them (as `env -u` would). Under pytest numpy is
already loaded, so run `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE pytest ...`; otherwise
the numpy cases are skipped. BLAS threads are limited with threadpoolctl when installed, else
through OpenBLAS's own openblas_set_num_threads found with ctypes.
"""
from __future__ import annotations

import os
import sys

_BAD_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
if __name__ == "__main__" and any(v in os.environ for v in _BAD_ENV):   # before numpy loads
    env = {k: v for k, v in os.environ.items() if k not in _BAD_ENV}
    os.execve(sys.executable, [sys.executable] + sys.argv, env)

import argparse
import ctypes
import statistics
import time

import numpy as np
import pytest

from kilnet import _cpu, fair_timing
from machine_info import machine, peak_line, peaks, simd_levels   # benchmarks/ is on sys.path

try:
    import torch
except ImportError:   # torch is optional: its columns are left out
    torch = None

# (name, M, N, K, trans_a, trans_b)
SHAPES = [
    ("square 64", 64, 64, 64, False, False),
    ("square 128", 128, 128, 128, False, False),
    ("square 256", 256, 256, 256, False, False),
    ("square 512", 512, 512, 512, False, False),
    ("square 1024", 1024, 1024, 1024, False, False),
    ("square 2048", 2048, 2048, 2048, False, False),   # issue 3 names 1024³ and 2048³
    ("dense fwd X.W", 32, 10, 21632, False, False),
    ("dense dW X^T.dY", 21632, 10, 32, True, False),
    ("dense dX dY.W^T", 32, 21632, 10, False, True),
    ("conv fwd", 676, 32, 9, False, False),
    ("conv 196x64x288", 196, 64, 288, False, False),
    # a training step's products (char Transformer, batch 32 x 128 tokens; LSTM 64x28, H 128):
    # with --cold their operands come from memory, as activations do in a step
    ("tf proj fwd", 4096, 128, 128, False, False),
    ("tf proj dX", 4096, 128, 128, False, True),
    ("tf proj dW", 128, 128, 4096, True, False),
    ("tf mlp dW1", 128, 512, 4096, True, False),
    ("tf mlp dW2", 512, 128, 4096, True, False),
    ("lstm dW", 156, 512, 1792, True, False),
]
LIBS = ["kilnet", "numpy", "torch"]


# ---- thread control ----------------------------------------------------------------------------

def set_blas_threads(n: int) -> bool:
    """Limit numpy's BLAS to n threads; False if no way to do it was found."""
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(n, user_api="blas")
        return True
    except ImportError:
        pass
    with open("/proc/self/maps") as f:   # the OpenBLAS numpy loaded (Linux)
        paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
    for path in paths:
        lib = ctypes.CDLL(path)
        for sym in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                    "openblas_set_num_threads64_", "openblas_set_num_threads"):
            fn = getattr(lib, sym, None)
            if fn is not None:
                fn(ctypes.c_int(n))
                return True
    return False


def set_threads(n: int) -> bool:
    _cpu.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
    return set_blas_threads(n)


# ---- the calls being timed ---------------------------------------------------------------------

def make_call(lib, M, N, K, ta, tb, seed=0):
    """A zero-argument function computing C = op(A)·op(B) with library lib, operands prepared."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1, 1, (K, M) if ta else (M, K)).astype(np.float32)
    b = rng.uniform(-1, 1, (N, K) if tb else (K, N)).astype(np.float32)
    c = np.empty((M, N), np.float32)
    if lib == "kilnet":
        return lambda: _cpu.gemm(a, b, c, ta, tb)
    if lib == "numpy":
        oa, ob = (a.T if ta else a), (b.T if tb else b)   # views: BLAS handles the transpose
        return lambda: np.matmul(oa, ob, out=c)
    ta_, tb_, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
    oa, ob = (ta_.T if ta else ta_), (tb_.T if tb else tb_)
    return lambda: torch.matmul(oa, ob, out=tc)


def time_calls(fn, seconds, before=None):
    """Per-call times of fn over about `seconds` (after one warm-up call); `before` (untimed)
    runs ahead of every call."""
    fn()
    times, end = [], time.perf_counter() + seconds
    while True:
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        times.append(t1 - t0)
        if t1 > end and len(times) >= 3:
            return times


def gflops(M, N, K, seconds):
    return 2.0 * M * N * K / seconds / 1e9


# ---- script mode: a table ----------------------------------------------------------------------

def libraries_info():
    blas = "OpenBLAS"
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    except Exception:   # older numpy: no dict mode
        pass
    return (f"kilnet {_cpu.simd_level()}, sgemm kernel {_cpu.gemm_kernel()} [{_cpu.build_info()}]; numpy {np.__version__} ({blas}); "
            f"torch {torch.__version__ if torch else 'absent'}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds per case")
    ap.add_argument("--seconds", type=float, default=0.08, help="timing per library per round")
    ap.add_argument("--only", default="", help="run only the shapes whose name contains this")
    ap.add_argument("--cold", action="store_true",
                    help="before every timed call, one pass over 64 MB (untimed): the operands come from "
                         "memory, as a layer's activations do in a training step")
    args = ap.parse_args(argv)
    flush = None
    if args.cold:
        evict = np.ones(16 << 20, np.float32)   # 64 MB: past this machine's L3
        flush = lambda: np.add(evict, 1.0, out=evict)   # noqa: E731
    libs = [l for l in LIBS if l != "torch" or torch is not None]
    print(f"machine: {machine()}")
    print(libraries_info())
    peak = peaks(args.threads)   # before any library's threads start spinning
    print(peak_line(peak))
    used, best = simd_levels()
    peer_peak = peak   # numpy and torch run the machine's best level even when KILNET_SIMD lowers kilnet's
    if best != used:
        peer_peak = peaks(args.threads, simd=best)
        print(peak_line(peer_peak, best) + " (numpy's and torch's %pk)")
    print(f"%pk = GFLOP/s / measured peak of that thread count; median of {args.rounds} interleaved rounds; "
          f"ratio = other time / kilnet time" + ("; cold operands (64 MB pass before each call)" if args.cold else "")
          + "\n")
    head = f"{'shape':18s} {'M x N x K':>17s} {'thr':>3s}"
    for lib in libs:
        head += f" {lib + ' ms':>10s} {'GF/s':>6s} {'%pk':>4s}"
    head += "".join(f" {'vs ' + l:>9s}" for l in libs[1:])
    print(head)
    best_rows = []
    for nt in args.threads:
        blas_ok = set_threads(nt)
        for name, M, N, K, ta, tb in SHAPES:
            if args.only not in name:
                continue
            calls = {lib: make_call(lib, M, N, K, ta, tb) for lib in libs}
            times = {lib: [] for lib in libs}
            best = {lib: float("inf") for lib in libs}   # least-contended round's median
            rounds = {lib: [] for lib in libs}
            for r in range(args.rounds):
                for lib in fair_timing.rotate(libs, r):   # the order changes every round
                    fair_timing.wait_idle()   # the other library's spinning workers are asleep
                    t = time_calls(calls[lib], args.seconds, flush)
                    times[lib] += t
                    rounds[lib].append(statistics.median(t))
                    best[lib] = min(best[lib], rounds[lib][-1])
            med = {lib: statistics.median(times[lib]) for lib in libs}
            dims = f"{M}x{N}x{K}" + ("" if not (ta or tb) else " " + ("T" if ta else "N") + ("T" if tb else "N"))
            row = f"{name:18s} {dims:>17s} {nt:3d}"
            for lib in libs:
                g = gflops(M, N, K, med[lib])
                row += f" {med[lib] * 1e3:10.4f} {g:6.1f} {100 * g / (peak if lib == 'kilnet' else peer_peak)[nt]:4.0f}"
            row += "".join(f" {med[l] / med['kilnet']:9.2f}" for l in libs[1:])
            if not blas_ok and nt != 1:
                row += "  (numpy threads not limited)"
            stalled = [l for l in libs if fair_timing.stalled(rounds[l])]
            if stalled:
                row += f"  ! stall: {', '.join(stalled)} (round medians spread > {fair_timing.STALL_SPREAD}x)"
            print(row, flush=True)
            best_rows.append(f"{name:18s} {dims:>17s} {nt:3d}"
                             + "".join(f" {gflops(M, N, K, best[l]):8.1f}" for l in libs)
                             + "".join(f" {best[l] / best['kilnet']:9.2f}" for l in libs[1:]))
    # On a shared machine another process may hold the second core for whole rounds; the median
    # of the least-disturbed round shows what each library does when it has the cores.
    print("\nleast-contended round (its median), GFLOP/s:")
    print(f"{'shape':18s} {'M x N x K':>17s} {'thr':>3s}" + "".join(f" {l:>8s}" for l in libs)
          + "".join(f" {'vs ' + l:>9s}" for l in libs[1:]))
    print("\n".join(best_rows))


# ---- pytest-benchmark mode ---------------------------------------------------------------------

@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("name,M,N,K,ta,tb", SHAPES, ids=[s[0].replace(" ", "_") for s in SHAPES])
def test_gemm(benchmark, name, M, N, K, ta, tb, lib, threads):
    if lib == "torch" and torch is None:
        pytest.skip("torch not installed")
    if lib == "numpy" and any(v in os.environ for v in _BAD_ENV):
        pytest.skip("OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE set: rerun under env -u for numpy")
    if not set_threads(threads) and lib == "numpy" and threads != 1:
        pytest.skip("cannot limit numpy's BLAS threads")
    fn = make_call(lib, M, N, K, ta, tb)
    benchmark.group = f"{name} {M}x{N}x{K} t{threads}"
    benchmark.pedantic(fn, rounds=30, iterations=max(1, int(2e8 // (2 * M * N * K))),
                       warmup_rounds=2)
    med = benchmark.stats.stats.median
    benchmark.extra_info["GFLOP/s"] = round(gflops(M, N, K, med), 1)
    fair_timing.wait_idle()   # see the module docstring


if __name__ == "__main__":
    main()
