"""kilnet next to numpy's and PyTorch's thread pools (issue 23): a loop that alternates a call of
one library with a call of another, against the two calls timed alone.

    python benchmarks/bench_neighbours.py [--threads 1 2] [--policies before after] [--pairs 300]
    python benchmarks/bench_neighbours.py --quick

The calls: numpy's 256^3 matmul (OpenBLAS), kilnet's Dense-forward GEMM 32x21632 . 21632x10
(kilnet._cpu.gemm) and PyTorch's 256^3 torch.mm. Pairs: numpy + kilnet, torch + kilnet, and
numpy + torch for reference. Each (policy, thread count) runs in its own process, because the
OpenMP wait policy is read once, when the OpenMP runtime loads; the policies are interleaved over
--rounds so that a change in the machine's load hits all of them.

For each pair it reports the medians of each call alone (back to back, after a pause that lets
the other pools' spinning workers go to sleep), the median and p90 of the alternating pair, the
pair's median over the sum of the two alone (target: <= 1.5) and each call's median inside the
pair over its median alone (how much the neighbour slows it).

Policies (what a worker process is started with):
  before      nothing done: every library with its default thread pool
  after       what docs/performance.md recommends for such loops: numpy's BLAS limited to 1
              thread with kilnet.utils.blas_threads(1) (threadpoolctl)
  obt         OPENBLAS_THREAD_TIMEOUT=4: numpy's OpenBLAS workers sleep right after a call
  kl1         kilnet's GEMM on 1 thread (the small-kernel option)
  spin=N      GOMP_SPINCOUNT=N: how long kilnet's (and PyTorch's: one libgomp) idle OpenMP
              workers spin before they sleep (libgomp's default: 300000)
  passive     OMP_WAIT_POLICY=passive (they sleep at once)
Performance is measured here, never asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

POLICIES = {
    "before": {},
    "after": {},
    "obt": {"OPENBLAS_THREAD_TIMEOUT": "4"},
    "kl1": {},
    "passive": {"OMP_WAIT_POLICY": "passive"},
}
PAIRS = (("numpy", "kilnet"), ("torch", "kilnet"), ("numpy", "torch"))
# The variables a policy may set; a worker starts with none of them unless its policy sets it.
_POLICY_VARS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")


def policy_env(name):
    if name.startswith("spin="):
        return {"GOMP_SPINCOUNT": name.split("=", 1)[1]}
    if name not in POLICIES:
        raise SystemExit(f"unknown policy {name!r}; choose from {', '.join(POLICIES)} or spin=N")
    return POLICIES[name]


# ---- worker: one process, one policy, one thread count ----------------------------------------------

_KEEP = []


def _calls(threads, policy, have_torch):
    """{library: zero-argument call} with every library set to `threads` threads."""
    import numpy as np
    from threadpoolctl import threadpool_limits
    import kilnet
    from kilnet import _cpu
    from kilnet.utils import blas_threads
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((256, 256), np.float32), rng.standard_normal((256, 256), np.float32)
    c = np.empty((256, 256), np.float32)
    x, w = rng.standard_normal((32, 21632), np.float32), rng.standard_normal((21632, 10), np.float32)
    y = np.empty((32, 10), np.float32)
    threadpool_limits(threads, user_api="blas")
    if policy == "after":   # for the rest of this process (kept referenced: a collected one restores)
        _KEEP.append(blas_threads(1))
        _KEEP[-1].__enter__()
    kilnet.set_num_threads(1 if policy == "kl1" else threads)
    calls = {"numpy": lambda: np.matmul(a, b, out=c), "kilnet": lambda: _cpu.gemm(x, w, y, False, False)}
    if have_torch:
        import torch
        torch.set_num_threads(threads)
        ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
        calls["torch"] = lambda: torch.mm(ta, tb, out=tc)
        if policy == "kl1":   # torch and kilnet may share one libgomp: keep kilnet's 1 thread
            kilnet.set_num_threads(1)
    return calls


def _stats(times):
    s = sorted(times)
    return {"median": statistics.median(s), "p90": s[min(len(s) - 1, int(0.9 * len(s)))]}


def worker(threads, policy, n, pause):
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    calls = _calls(threads, policy, have_torch)
    for fn in calls.values():   # first calls: page faults, thread creation
        for _ in range(5):
            fn()
    pairs = [(p, q) for p, q in PAIRS if p in calls and q in calls]
    alone = {lib: [] for lib in calls}
    inpair = {f"{p}+{q}": ([], [], []) for p, q in pairs}
    blocks = max(1, min(5, n // 10))   # alone and paired loops take turns: a load change hits both
    for blk in range(blocks):
        m = n // blocks + (blk < n % blocks)
        for lib, fn in calls.items():
            time.sleep(pause)   # the other pools' idle workers stop spinning
            for _ in range(m):
                t0 = time.perf_counter()
                fn()
                alone[lib].append(time.perf_counter() - t0)
        for p, q in pairs:
            f, g = calls[p], calls[q]
            tp, tq, tpair = inpair[f"{p}+{q}"]
            time.sleep(pause)
            for _ in range(m):
                t0 = time.perf_counter()
                f()
                t1 = time.perf_counter()
                g()
                t2 = time.perf_counter()
                tp.append(t1 - t0)
                tq.append(t2 - t1)
                tpair.append(t2 - t0)
    out = {"alone": {lib: _stats(t) for lib, t in alone.items()}, "pairs": {}}
    for (p, q) in pairs:
        tp, tq, tpair = inpair[f"{p}+{q}"]
        out["pairs"][f"{p}+{q}"] = {"pair": _stats(tpair), p: _stats(tp), q: _stats(tq)}
    print(json.dumps(out))


# ---- driver -------------------------------------------------------------------------------------

def run_worker(policy, threads, n, pause):
    env = {k: v for k, v in os.environ.items() if k not in _POLICY_VARS}
    env.update(policy_env(policy))
    env["OMP_NUM_THREADS"] = str(threads)
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", "--policy", policy,
                        "--threads", str(threads), "--pairs", str(n), "--pause", str(pause)],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"worker {policy} threads={threads} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _ms(s):
    return f"{s * 1e3:.3f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--policies", nargs="+", default=["before", "after"])
    ap.add_argument("--pairs", type=int, default=300, help="calls per loop")
    ap.add_argument("--rounds", type=int, default=3, help="processes per (policy, threads), interleaved")
    ap.add_argument("--pause", type=float, default=0.2, help="seconds of sleep before each loop")
    ap.add_argument("--quick", action="store_true", help="a few seconds: 1 round of 20 pairs, pause 0.05 s")
    ap.add_argument("--json", help="also write every process's results to this file")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--policy", default="after", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.threads[0], args.policy, args.pairs, args.pause)
    if args.quick:
        args.pairs, args.rounds, args.pause = 20, 1, 0.05
    for p in args.policies:
        policy_env(p)   # unknown names fail before any run
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from machine_info import machine
    print(machine())
    print(f"{args.rounds} round(s) x {args.pairs} calls per loop; medians over rounds of each process's "
          "median (p90: median of the p90s); ratio = pair median / (sum of the two alone)")
    res = {}
    for _ in range(args.rounds):
        for t in args.threads:
            for p in args.policies:   # interleaved: a load change hits every policy
                res.setdefault((p, t), []).append(run_worker(p, t, args.pairs, args.pause))
    # Over rounds: the median of each process's median, and the best (lowest) of them. A stall
    # that the pools cause happens in every round; the machine's other load does not, so the
    # best round shows the first without the second.
    med = statistics.median
    hdr = ("threads", "policy", "pair", "A alone", "B alone", "pair med", "pair p90", "pair/sum",
           "best pair/sum", "A in pair/alone", "B in pair/alone")
    rows = []
    for t in args.threads:
        for p in args.policies:
            runs = res[(p, t)]
            for pair in runs[0]["pairs"]:
                a, b = pair.split("+")
                al = med([r["alone"][a]["median"] for r in runs])
                bl = med([r["alone"][b]["median"] for r in runs])
                pm = med([r["pairs"][pair]["pair"]["median"] for r in runs])
                p90 = med([r["pairs"][pair]["pair"]["p90"] for r in runs])
                best = min(r["pairs"][pair]["pair"]["median"] / (r["alone"][a]["median"] + r["alone"][b]["median"])
                           for r in runs)
                ai = med([r["pairs"][pair][a]["median"] for r in runs])
                bi = med([r["pairs"][pair][b]["median"] for r in runs])
                rows.append((str(t), p, pair, _ms(al), _ms(bl), _ms(pm), _ms(p90), f"{pm / (al + bl):.2f}",
                             f"{best:.2f}", f"{ai / al:.2f}", f"{bi / bl:.2f}"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{p} {t}": runs for (p, t), runs in res.items()}, f)
    print("times in ms")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "|".join("---" for _ in hdr) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
