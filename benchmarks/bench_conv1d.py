"""Conv1D benchmark: kilnet.layers.Conv1D against torch.nn.Conv1d (CPU), forward and
forward+backward, 1 and 2 threads, on text-like shapes.

    python benchmarks/bench_conv1d.py [--reps 30] [--rounds 3] [--threads 1 2]

Each library runs in its own subprocess (one per case, thread count and round; rounds alternate
the two libraries, in an order that rotates every round, so both see the same machine load:
subprocess_bench.run_workers), and the table shows the median over the rounds of each
subprocess's median call time; "!" marks a time whose rounds spread by more than
kilnet.fair_timing.STALL_SPREAD (a stall or a busy machine, issue 23). kilnet runs the layer's
own forward/backward (the fused kernels the training step calls, with the weight gradients
accumulated as in fit); torch runs nn.Conv1d in its native (batch, channels, steps) layout with
x requiring grad, so both compute dx, dw and db. 'causal' in torch is F.pad on the left, then
the convolution, as it is written there. Imports kilnet normally: run it from an installed
wheel or with PYTHONPATH=python.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from kilnet import fair_timing
from subprocess_bench import machine, medians, run_workers, stall_mark   # benchmarks/ is on sys.path

# name: (B, T, C, F, k, padding, dilation)
CASES = {
    "B32 T256 C128->128 k3 same": (32, 256, 128, 128, 3, "same", 1),
    "B32 T256 C128->128 k5 same": (32, 256, 128, 128, 5, "same", 1),
    "B32 T256 C64->64 k3 d2 causal": (32, 256, 64, 64, 3, "causal", 2),
    "B24 T173 C67->45 k7 valid (odd)": (24, 173, 67, 45, 7, "valid", 1),
}


def median_ms(fn, reps):
    fn()
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def run_kilnet(case, threads, reps):
    import numpy as np
    import kilnet
    from kilnet import layers
    kilnet.set_num_threads(threads)
    B, T, C, F, k, padding, d = CASES[case]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, C), dtype=np.float32)
    layer = layers.Conv1D(F, k, padding=padding, dilation_rate=d)
    layer(x[:1])   # build
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape, dtype=np.float32)

    def fwd():
        layer.forward(x)

    def fwdbwd():
        layer.forward(x)
        layer.backward(dy)
    return {"fwd": median_ms(fwd, reps), "fwdbwd": median_ms(fwdbwd, reps)}


def run_torch(case, threads, reps):
    import numpy as np
    import torch
    torch.set_num_threads(threads)
    B, T, C, F, k, padding, d = CASES[case]
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((B, C, T), dtype=np.float32)).requires_grad_(True)
    pad = "same" if padding == "same" else 0
    conv = torch.nn.Conv1d(C, F, k, padding=pad, dilation=d)
    left = d * (k - 1) if padding == "causal" else 0

    def out():
        xin = torch.nn.functional.pad(x, (left, 0)) if left else x
        return conv(xin)
    with torch.no_grad():
        dy = torch.from_numpy(rng.standard_normal(tuple(out().shape), dtype=np.float32))

    def fwd():
        with torch.no_grad():
            out()

    def fwdbwd():
        out().backward(dy)
    return {"fwd": median_ms(fwd, reps), "fwdbwd": median_ms(fwdbwd, reps)}


def worker(lib, case, threads, reps):
    """Runs in a fresh process: the thread counts are set before any work."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    res = (run_kilnet if lib == "kilnet" else run_torch)(case, threads, reps)
    print(json.dumps(res))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=30, help="timed calls per subprocess")
    ap.add_argument("--rounds", type=int, default=3, help="subprocesses per library, alternating in a rotating order")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--case", choices=list(CASES), action="append")
    ap.add_argument("--worker", choices=["kilnet", "torch"])
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.case[0], args.threads[0], args.reps)

    import torch
    import kilnet
    print(f"# {machine()}")
    print(f"# kilnet {kilnet.__version__} simd={kilnet.simd_level()}; torch {torch.__version__}; medians of {args.rounds} subprocesses x "
          f"{args.reps} calls")
    print("| case | threads | op | kilnet ms | torch ms | torch / kilnet |")
    print("|---|---|---|---|---|---|")
    for case in args.case or list(CASES):
        for nt in args.threads:
            runs = run_workers(os.path.abspath(__file__), ["kilnet", "torch"], [nt], args.rounds,
                               extra=("--case", case, "--reps", str(args.reps)))
            k, t = runs["kilnet", nt], runs["torch", nt]
            for op in ("fwd", "fwdbwd"):
                km, tm = medians(k, op), medians(t, op)
                print(f"| {case} | {nt} | {'fwd' if op == 'fwd' else 'fwd+bwd'} | {km:.3f}{stall_mark(k, op)} | "
                      f"{tm:.3f}{stall_mark(t, op)} | {tm / km:.2f}x |", flush=True)
    print(f"# ! = that time's rounds spread by more than {fair_timing.STALL_SPREAD}x (max/min): "
          "a stall or a busy machine, not the kernel")
    print(f"# load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
