"""bfloat16 GEMM with float32 accumulation: kilnet._cpu.gemm_bf16 (AMX tiles where the CPU has
them, else VDPBF16PS where it has AVX512-BF16) against PyTorch's bfloat16 torch.mm, in one
process, at 1 and 2 threads.

    python benchmarks/bench_gemm_bf16.py [--threads 1 2] [--sizes 256 1024 2048] [--rounds 5]

Columns (GFLOP/s, median call of the best round): kilnet with bfloat16 operands (uint16 bits)
and a float32 result, the same with a bfloat16 result (rounded once from the tiles, as torch.mm
returns), kilnet with float32 operands (rounded while packing: no separate conversion pass),
torch.mm on bfloat16 tensors (its result is bfloat16), and torch.mm followed by .float() (a
float32 result). "vs torch" compares the two bfloat16 results. The libraries alternate round by round, in an order that rotates every
round, each call's turn starting once the other pools' idle workers stopped spinning
(kilnet.fair_timing); "!" marks a column whose round medians spread by more than
fair_timing.STALL_SPREAD (a stall or a busy machine, issue 23). kilnet's float32 SGEMM at the
same size is shown for scale, with the measured FMA peak of the SIMD level in use; where the
bfloat16 level is avx512bf16, "bf%pk" is kilnet's bfloat16-output column against the measured
VDPBF16PS peak (kilnet._cpu.bf16_dot_peak_gflops; AMX has no such probe: "-").
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from kilnet import fair_timing
from machine_info import machine, pct, peak_line, peaks   # benchmarks/ is on sys.path


def median_call(fn, seconds):
    fn()
    times, end = [], time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        times.append(t1 - t0)
        if t1 > end and len(times) >= 3:
            return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 2048])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.15, help="timing per library per round")
    args = ap.parse_args(argv)
    from kilnet import _cpu
    try:
        import torch
    except ImportError:
        torch = None
    print(machine())
    pk = peaks(args.threads)
    print(peak_line(pk))
    level = _cpu.bf16_level()
    # the best of ten short probes, as machine_info.fma_peak does for the FMA peak
    dot = {t: max(_cpu.bf16_dot_peak_gflops(t, 0.02) for _ in range(10)) for t in args.threads} \
        if level == "avx512bf16" else {}
    print(f"kilnet bf16 path: {level}; torch {torch.__version__ if torch else 'absent'}"
          + ("".join(f"; VDPBF16PS peak {t} thr {g:.0f} GFLOP/s" for t, g in dot.items())))
    print(f"{'n':>5} {'thr':>3} {'kil bf16':>9} {'kil ->bf16':>10} {'kil f32in':>9} {'torch bf16':>10} {'torch->f32':>10} "
          f"{'vs torch':>8} {'bf%pk':>5} {'kil sgemm':>9} {'%pk':>4}")
    for t in args.threads:
        _cpu.set_num_threads(t)
        if torch is not None:
            torch.set_num_threads(t)
        for n in args.sizes:
            rng = np.random.default_rng(n)
            a32 = rng.uniform(-1, 1, (n, n)).astype(np.float32)
            b32 = rng.uniform(-1, 1, (n, n)).astype(np.float32)
            a, b = _cpu.to_bfloat16(a32), _cpu.to_bfloat16(b32)
            c = np.empty((n, n), np.float32)
            c16 = np.empty((n, n), np.uint16)   # bfloat16 bits
            calls = {"kil bf16": lambda: _cpu.gemm_bf16(a, b, c),
                     "kil ->bf16": lambda: _cpu.gemm_bf16(a, b, c16),
                     "kil f32in": lambda: _cpu.gemm_bf16(a32, b32, c),
                     "kil sgemm": lambda: _cpu.gemm(a32, b32, c)}
            if torch is not None:
                ta, tb = torch.from_numpy(a32).bfloat16(), torch.from_numpy(b32).bfloat16()
                calls["torch bf16"] = lambda: torch.mm(ta, tb)
                calls["torch->f32"] = lambda: torch.mm(ta, tb).float()
            rounds = {name: [] for name in calls}   # GFLOP/s of each round's median call
            for r in range(args.rounds):
                for name in fair_timing.rotate(calls, r):   # the order changes every round
                    fair_timing.wait_idle()   # the other pools' idle workers stopped spinning
                    rounds[name].append(2.0 * n ** 3 / median_call(calls[name], args.seconds) / 1e9)
            best = {name: max(g) for name, g in rounds.items()}

            def col(name, width):   # the best round's GFLOP/s, "!" when the rounds spread too far
                if name not in best:
                    return f"{'nan':>{width}}"
                return f"{best[name]:>{width - 1}.0f}" + ("!" if fair_timing.stalled(rounds[name]) else " ")
            tb16 = best.get("torch bf16")
            ratio = f"{best['kil ->bf16'] / tb16:.2f}" if tb16 else "-"
            print(f"{n:>5} {t:>3} {col('kil bf16', 9)} {col('kil ->bf16', 10)} {col('kil f32in', 9)} {col('torch bf16', 10)} "
                  f"{col('torch->f32', 10)} {ratio:>8} {pct(best['kil ->bf16'], dot[t]) if dot else '-':>5} "
                  f"{col('kil sgemm', 9)} {pct(best['kil sgemm'], pk[t]):>4}",
                  flush=True)
    print(f"! = that column's round medians spread by more than {fair_timing.STALL_SPREAD}x (max/min): "
          "a stall or a busy machine, not the kernel")


if __name__ == "__main__":
    main()
