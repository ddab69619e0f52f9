"""Embedding gather (forward) and weight gradient (backward) vs torch (CPU), each library in its
own process.

    python benchmarks/bench_embedding.py [--threads 1 2] [--runs 3]

Vocabulary 30,000, width 128, 8,192 tokens (64 x 128 int64 ids), two id distributions: uniform,
and Zipf-like (a few ids carry most tokens, as in text). forward: out = W[ids] (kilnet
_cpu.embedding_forward into a reused buffer; torch F.embedding, which allocates its output).
backward: the dense weight gradient. torch's is aten.embedding_dense_backward (what autograd
runs for nn.Embedding): it returns a freshly zeroed (V, D) gradient with the rows added; kilnet's
is _cpu.embedding_backward(..., accumulate=False), what the layer runs on a training step's first
write: zeros and the deterministic row sums in one pass over dW on every thread. Both do the same
work: zero 15 MB and add 8,192 rows. Zeroing alone (numpy fill, torch.zeros) is timed too, and
the scatter ratio compares torch's bwd minus its zeroing with kilnet's scatter-add alone
(accumulate=True: a second call of the layer in the same step).
Reported: medians over runs of each run's median.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from subprocess_bench import machine, medians, run_workers, set_threads, stall_mark, time_call   # benchmarks/ is on sys.path

V, D, SHAPE = 30_000, 128, (64, 128)


def make_ids(dist):
    rng = np.random.default_rng(0)
    if dist == "uniform":
        return rng.integers(0, V, SHAPE).astype(np.int64)
    return (np.minimum(rng.zipf(1.3, SHAPE), V) - 1).astype(np.int64)


def worker(lib, threads):
    set_threads(lib, threads)
    rng = np.random.default_rng(1)
    W = rng.uniform(-0.05, 0.05, (V, D)).astype(np.float32)
    dy = rng.standard_normal(SHAPE + (D,)).astype(np.float32)
    res = {}
    for dist in ("uniform", "zipf"):
        ids = make_ids(dist)
        if lib == "kilnet":
            from kilnet import _cpu
            out, dW = np.empty(SHAPE + (D,), np.float32), np.zeros((V, D), np.float32)

            res[f"{dist}_fwd"] = time_call(lambda: _cpu.embedding_forward(ids, W, out))
            res[f"{dist}_bwd"] = time_call(lambda: _cpu.embedding_backward(ids, dy, dW, accumulate=False))
            res[f"{dist}_scatter"] = time_call(lambda: _cpu.embedding_backward(ids, dy, dW))
            res[f"{dist}_zeros"] = time_call(lambda: dW.fill(0))
        else:
            import torch
            Wt, idt, dyt = torch.from_numpy(W), torch.from_numpy(ids), torch.from_numpy(dy)
            with torch.no_grad():
                res[f"{dist}_fwd"] = time_call(lambda: torch.nn.functional.embedding(idt, Wt))
                res[f"{dist}_bwd"] = time_call(lambda: torch.ops.aten.embedding_dense_backward(dyt, idt, V, -1, False))
                res[f"{dist}_zeros"] = time_call(lambda: torch.zeros((V, D)))   # its share of bwd
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
    print(f"kilnet {kilnet.__version__} ({kilnet.simd_level()}), torch {torch.__version__}; V={V}, D={D}, "
          f"tokens={SHAPE[0] * SHAPE[1]}; ms, medians of {args.runs} runs (one process per library and run)\n")
    res = run_workers(os.path.abspath(__file__), ["kilnet", "torch"], args.threads, args.runs)
    print("bwd = zero the (V, D) gradient + add the rows (kilnet: one pass); (zero) = a zeroing alone "
          "(numpy fill, torch.zeros); scatter = torch's bwd - zero against kilnet's scatter-add alone\n")
    print(f"{'ids':<9}{'thr':>4}{'fwd kilnet':>12}{'fwd torch':>11}{'torch/kil':>10}"
          f"{'bwd kilnet':>12}{'(zero)':>8}{'bwd torch':>11}{'(zero)':>8}{'torch/kil':>10}{'scatter t/k':>13}")
    for dist in ("uniform", "zipf"):
        for t in args.threads:
            k, tt = res[("kilnet", t)], res[("torch", t)]
            kf, tf = medians(k, f"{dist}_fwd") * 1e3, medians(tt, f"{dist}_fwd") * 1e3
            kb, tb = medians(k, f"{dist}_bwd") * 1e3, medians(tt, f"{dist}_bwd") * 1e3
            ks = medians(k, f"{dist}_scatter") * 1e3
            kz, tz = medians(k, f"{dist}_zeros") * 1e3, medians(tt, f"{dist}_zeros") * 1e3
            print(f"{dist:<9}{t:>4}{kf:>12.3f}{tf:>11.3f}{tf / kf:>9.2f}x{kb:>12.3f}{kz:>8.3f}{tb:>11.3f}{tz:>8.3f}"
                  f"{tb / kb:>9.2f}x{max(tb - tz, 0) / ks:>12.2f}x"
                  + (" ! stall" if any(stall_mark(r, q) for r in (k, tt) for q in [f"{dist}_fwd", f"{dist}_bwd"]) else ""))


if __name__ == "__main__":
    main()
