"""LayerNormalization forward and backward vs torch (CPU), each library in its own process.

    python benchmarks/bench_layernorm.py [--threads 1 2] [--runs 3]

Transformer-like shapes (rows x features): 8192 x 128, 4096 x 768, and the odd 1000 x 300,
normalized over the last axis with gamma and beta, epsilon 1e-3. kilnet: _cpu.layernorm_forward
(y, per-row mean and invstd into reused buffers) and _cpu.layernorm_backward (dx, dgamma,
dbeta). torch: aten.native_layer_norm and aten.native_layer_norm_backward (the kernels autograd
runs for nn.LayerNorm, without the autograd bookkeeping; they allocate their outputs). Reported:
forward, backward and their sum, medians over runs of each run's median.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from subprocess_bench import machine, medians, run_workers, set_threads, stall_mark, time_call   # benchmarks/ is on sys.path

SHAPES = [(8192, 128), (4096, 768), (1000, 300)]
EPS = 1e-3


def worker(lib, threads):
    set_threads(lib, threads)
    rng = np.random.default_rng(0)
    res = {}
    for M, C in SHAPES:
        x = (rng.standard_normal((M, C)) * 2 + 0.5).astype(np.float32)
        dy = rng.standard_normal((M, C)).astype(np.float32)
        g = rng.uniform(0.5, 1.5, C).astype(np.float32)
        b = rng.standard_normal(C).astype(np.float32)
        key = f"{M}x{C}"
        if lib == "kilnet":
            from kilnet import _cpu
            y, dx = np.empty_like(x), np.empty_like(x)
            mean, inv = np.empty(M, np.float32), np.empty(M, np.float32)
            dg, db = np.zeros(C, np.float32), np.zeros(C, np.float32)
            fwd = lambda: _cpu.layernorm_forward(x, g, b, mean, inv, y, EPS)
            bwd = lambda: _cpu.layernorm_backward(x, dy, g, mean, inv, dx, dg, db)
            fwd()
        else:
            import torch
            xt, dyt, gt, bt = (torch.from_numpy(a) for a in (x, dy, g, b))
            _, mt, rt = torch.ops.aten.native_layer_norm(xt, [C], gt, bt, EPS)
            fwd = lambda: torch.ops.aten.native_layer_norm(xt, [C], gt, bt, EPS)
            bwd = lambda: torch.ops.aten.native_layer_norm_backward(dyt, xt, [C], mt, rt, gt, bt, [True, True, True])
        res[key + "_fwd"] = time_call(fwd)
        res[key + "_bwd"] = time_call(bwd)
    print(json.dumps(res))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--worker", choices=["kilnet", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.threads[0])
    import kilnet
    import torch
    print(f"machine: {machine()}")
    print(f"kilnet {kilnet.__version__} ({kilnet.simd_level()}), torch {torch.__version__}; ms, medians of "
          f"{args.runs} runs (one process per library and run)\n")
    res = run_workers(os.path.abspath(__file__), ["kilnet", "torch"], args.threads, args.runs)
    print(f"{'shape':<11}{'thr':>4}{'fwd kilnet':>12}{'fwd torch':>11}{'bwd kilnet':>12}{'bwd torch':>11}"
          f"{'f+b kilnet':>12}{'f+b torch':>11}{'torch/kilnet':>14}")
    for M, C in SHAPES:
        key = f"{M}x{C}"
        for t in args.threads:
            k, tt = res[("kilnet", t)], res[("torch", t)]
            kf, tf = medians(k, key + "_fwd") * 1e3, medians(tt, key + "_fwd") * 1e3
            kb, tb = medians(k, key + "_bwd") * 1e3, medians(tt, key + "_bwd") * 1e3
            print(f"{key:<11}{t:>4}{kf:>12.3f}{tf:>11.3f}{kb:>12.3f}{tb:>11.3f}{kf + kb:>12.3f}{tf + tb:>11.3f}"
                  f"{(tf + tb) / (kf + kb):>13.2f}x"
                  + (" ! stall" if any(stall_mark(r, q) for r in (k, tt) for q in [key + "_fwd", key + "_bwd"]) else ""))


if __name__ == "__main__":
    main()
