"""Fused attention vs PyTorch (CPU): kilnet.ops.dot_product_attention against
torch.nn.functional.scaled_dot_product_attention, forward + backward.

    python benchmarks/bench_attention.py [--threads 1 2] [--T 256 1024] [--rounds 3] [--iters 2]
    python benchmarks/bench_attention.py --threads 1 --clock cpu     (CPU time: steadier on a busy machine)
    python benchmarks/bench_attention.py --memory-only [--mem-T 4096]
    python benchmarks/bench_attention.py --bf16 ...   (also: bfloat16 products vs torch on bfloat16)

speed: batch 8, 8 heads, head dim 64, T = Tq = Tk, causal and not. Each library runs in its own
subprocess (a worker that times `iters` calls after a warm-up, so no other pool is in its way), one
per library and round, in an order that rotates every round (kilnet.fair_timing.rotate) so a change
in the machine's load hits both; reported: the median over all calls of one forward + backward
(gradients of query, key and value for a given output gradient), and of the forward alone, marked
"!" when the rounds' medians spread by more than fair_timing.STALL_SPREAD (a stall, issue 23).
kilnet: the public op on the GradientTape (layout (B, T, N, H)); torch: tensors of shape
(B, N, T, H) with requires_grad, .backward(grad). Arithmetic, non-causal: forward
4·B·N·T²·H, backward 10·B·N·T²·H (recomputed scores, dV, dP, dQ, dK); causal about half.

memory: the peak resident memory a fresh process gains over one forward + backward at
T = 4096 (batch 1, 8 heads, head dim 64; inputs, outputs and gradients are allocated before the
baseline), per library. The score matrix alone would be 8·T²·4 bytes = 512 MiB.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from kilnet import fair_timing
from machine_info import machine   # benchmarks/ is on sys.path

B, N, H = 8, 8, 64


# ---------------------------------------------------------------------------------- workers
def _inputs(b, T, n, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((b, T, n, H)).astype(np.float32) for _ in range(4)]   # q, k, v, dout


def _kilnet_step(b, T, n, causal, threads):
    import kilnet
    import kilnet.ops as K
    from kilnet.engine.tape import GradientTape
    from kilnet.engine.tensor import Tensor
    kilnet.set_num_threads(threads)
    q, k, v, do = _inputs(b, T, n)
    ts = [Tensor(a) for a in (q, k, v)]

    def fwd():
        return K.dot_product_attention(*ts, is_causal=causal)

    def step():
        with GradientTape() as tape:
            tape.watch(ts)
            y = K.dot_product_attention(*ts, is_causal=causal)
        return tape.gradient(y, ts, output_gradients=do)
    return fwd, step


def _torch_step(b, T, n, causal, threads, bf16=False):
    """bf16: PyTorch's SDPA on bfloat16 tensors (its CPU flash kernel), bfloat16 gradients."""
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(threads)
    q, k, v, do = (torch.from_numpy(a).transpose(1, 2).contiguous() for a in _inputs(b, T, n))
    if bf16:
        q, k, v, do = (t.bfloat16() for t in (q, k, v, do))
    q, k, v = (t.requires_grad_() for t in (q, k, v))

    def fwd():
        with torch.no_grad():
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def step():
        for t in (q, k, v):
            t.grad = None
        F.scaled_dot_product_attention(q, k, v, is_causal=causal).backward(do)
        return q.grad, k.grad, v.grad
    return fwd, step


def _kilnet_bf16_step(b, T, n, causal, threads):
    """The op as a layer's call runs it under a bfloat16 policy: the kernels with bfloat16
    products (AMX tiles where bf16_level() is 'amx'), float32 inputs, outputs and gradients."""
    from kilnet.engine import precision
    fwd, step = _kilnet_step(b, T, n, causal, threads)

    def under_policy(f):
        def g():
            token = precision.enter_autocast(precision.np_dtype("bfloat16"))
            try:
                return f()
            finally:
                precision.exit_autocast(token)
        return g
    return under_policy(fwd), under_policy(step)


def _torch_bf16_step(b, T, n, causal, threads):
    return _torch_step(b, T, n, causal, threads, bf16=True)


STEPS = {"kilnet": _kilnet_step, "torch": _torch_step}
BF16_STEPS = {"kilnet": _kilnet_step, "kilnet-bf16": _kilnet_bf16_step, "torch-bf16": _torch_bf16_step}
ALL_STEPS = {**STEPS, **BF16_STEPS}


def worker_speed(lib, T, causal, threads, iters, clock):
    fwd, step = ALL_STEPS[lib](B, T, N, causal, threads)
    step()                                   # warm-up (allocations, thread team)
    out = {"step": [], "fwd": []}
    now = time.process_time if clock == "cpu" else time.perf_counter
    for _ in range(iters):
        t0 = now()
        step()
        t1 = now()
        fwd()
        t2 = now()
        out["step"].append(t1 - t0)
        out["fwd"].append(t2 - t1)
    return out


def _worker_memory_first_call(lib, T, threads):
    """Peak RSS growth of the first forward + backward, inputs already allocated."""
    import resource
    import numpy as np
    if lib == "kilnet":
        import kilnet  # noqa: F401  (imports and thread start-up before the baseline)
    else:
        import torch  # noqa: F401
    fwd, step = STEPS[lib](1, T, N, False, threads)
    # the outputs of one step (out + 3 gradients), allocated before the baseline
    keep = [np.ones((1, T, N, H), np.float32) for _ in range(4)]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    del keep
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"grown_bytes": max(0, peak - base) * 1024}


def _run_worker(args_list):
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", *args_list],
                       capture_output=True, text=True, env=fair_timing.worker_env(args_list[1]))
    if r.returncode != 0:
        raise RuntimeError(f"worker {args_list} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def stall_mark(workers, key):
    """"!" when the per-round medians of `key` (one worker per round) spread by more than
    fair_timing.STALL_SPREAD (max/min): a stalled or disturbed round, not the kernel; else ""."""
    rounds = [statistics.median(w[key]) for w in workers]
    return "!" if len(rounds) > 1 and fair_timing.stalled(rounds) else ""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--T", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--rounds", type=int, default=3, help="rounds of one worker per library per case")
    ap.add_argument("--iters", type=int, default=3, help="timed calls per worker")
    ap.add_argument("--mem-T", type=int, default=4096)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: process CPU time (1 thread only; less sensitive to other processes on a busy machine)")
    ap.add_argument("--memory-only", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--bf16", action="store_true",
                    help="also a mixed-precision table: kilnet float32, kilnet with bfloat16 products (the op "
                         "under a bfloat16 policy) and PyTorch's SDPA on bfloat16 tensors, forward+backward")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        kind, lib, *rest = args.worker
        if kind == "speed":
            T, causal, threads, iters, clock = int(rest[0]), rest[1] == "1", int(rest[2]), int(rest[3]), rest[4]
            print(json.dumps(worker_speed(lib, T, causal, threads, iters, clock)))
        else:
            print(json.dumps(_worker_memory_first_call(lib, int(rest[0]), int(rest[1]))))
        return

    print(f"# {machine()}")
    if not args.memory_only:
        if args.clock == "cpu" and args.threads != [1]:
            raise SystemExit("--clock cpu measures one thread: pass --threads 1")
        print(f"# B={B} N={N} H={H}; median ms ({args.clock} clock) over {args.rounds} rounds x {args.iters} calls, "
              f"each library in its own subprocess, the order rotating by round")
        print("| threads | T | causal | kilnet fwd+bwd | torch fwd+bwd | speedup | kilnet fwd | torch fwd | "
              "fwd speedup |")
        print("|---|---|---|---|---|---|---|---|---|")
        for threads in args.threads:
            for T in args.T:
                for causal in (False, True):
                    runs = {lib: [] for lib in STEPS}   # per library: each round's worker result
                    for r in range(args.rounds):
                        for lib in fair_timing.rotate(STEPS, r):   # the order changes every round
                            runs[lib].append(_run_worker(["speed", lib, str(T), "1" if causal else "0",
                                                          str(threads), str(args.iters), args.clock]))
                    med = {lib: {k: statistics.median(x for w in ws for x in w[k]) * 1e3 for k in ("step", "fwd")}
                           for lib, ws in runs.items()}
                    ks, ts = med["kilnet"], med["torch"]
                    ms = lambda lib, k: f"{med[lib][k]:.1f}{stall_mark(runs[lib], k)}"  # noqa: E731
                    print(f"| {threads} | {T} | {'yes' if causal else 'no'} | {ms('kilnet', 'step')} | "
                          f"{ms('torch', 'step')} | **{ts['step'] / ks['step']:.2f}x** | {ms('kilnet', 'fwd')} | "
                          f"{ms('torch', 'fwd')} | {ts['fwd'] / ks['fwd']:.2f}x |", flush=True)
        if args.bf16:
            bf16_table(args)
        print(f"# ! = the rounds' medians of that time spread by more than {fair_timing.STALL_SPREAD}x (max/min): "
              "a stalled or disturbed round, not the kernel")
    if not args.no_memory:
        print(f"\n# peak RSS growth of one forward + backward, batch 1, {N} heads, H={H}, T={args.mem_T} "
              f"(score matrix: {N * args.mem_T ** 2 * 4 / 2 ** 20:.0f} MiB)")
        for lib in STEPS:
            w = _run_worker(["memory", lib, str(args.mem_T), "1"])
            print(f"{lib}: {w['grown_bytes'] / 2 ** 20:.1f} MiB", flush=True)


def bf16_table(args):
    from kilnet import _cpu
    print(f"\n# mixed precision (kilnet bf16 path: {_cpu.bf16_level()}): forward+backward, median ms")
    print("| threads | T | causal | kilnet float32 | kilnet bf16 products | torch bf16 | bf16/f32 | vs torch bf16 |")
    print("|---|---|---|---|---|---|---|---|")
    for threads in args.threads:
        for T in args.T:
            for causal in (False, True):
                runs = {lib: [] for lib in BF16_STEPS}
                for r in range(args.rounds):
                    for lib in fair_timing.rotate(BF16_STEPS, r):
                        runs[lib].append(_run_worker(["speed", lib, str(T), "1" if causal else "0", str(threads),
                                                      str(args.iters), args.clock]))
                med = {lib: statistics.median(x for w in ws for x in w["step"]) * 1e3 for lib, ws in runs.items()}
                ms = lambda lib: f"{med[lib]:.1f}{stall_mark(runs[lib], 'step')}"  # noqa: E731
                print(f"| {threads} | {T} | {'yes' if causal else 'no'} | {ms('kilnet')} | {ms('kilnet-bf16')} | "
                      f"{ms('torch-bf16')} | {med['kilnet'] / med['kilnet-bf16']:.2f}x | "
                      f"**{med['torch-bf16'] / med['kilnet-bf16']:.2f}x** |", flush=True)


if __name__ == "__main__":
    main()
