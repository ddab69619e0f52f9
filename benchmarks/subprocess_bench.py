"""Shared by the kernel benchmarks that time each library in its own process
(bench_embedding.py, bench_layernorm.py): a worker times callables and prints JSON; the driver
starts one worker per (library, thread count), alternating the libraries over several runs (in
an order that rotates every run) so that a change in the machine's load hits both, and reports
medians; stall_mark flags a value whose runs spread implausibly (kilnet.fair_timing, issue 23). machine() is
machine_info.machine, the header line every script prints."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from machine_info import machine  # noqa: F401  (the header line; benchmarks/ is on sys.path)
from kilnet import fair_timing


def time_call(fn, min_seconds=0.25, warmup=3):
    """Median seconds of one call of fn, over at least min_seconds of calls (after warm-up)."""
    for _ in range(warmup):
        fn()
    times, total = [], 0.0
    while total < min_seconds or len(times) < 5:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        total += dt
    return statistics.median(times)


def set_threads(lib, threads):
    """Pin the thread count of the library about to be imported (env first, then its API)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if lib == "torch":
        import torch
        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
    else:
        import kilnet
        kilnet.set_num_threads(threads)


def run_workers(script, libs, threads_list, runs, extra=()):
    """{(lib, threads): [result dict of each run]}: one fresh process per (run, threads, lib)."""
    out = {}
    for run in range(runs):
        for t in threads_list:
            for lib in fair_timing.rotate(libs, run):   # the order changes every run (issue 23)
                r = subprocess.run([sys.executable, script, "--worker", lib, "--threads", str(t), *extra],
                                   capture_output=True, text=True, env=fair_timing.worker_env(lib, t))
                if r.returncode != 0:
                    raise SystemExit(f"worker {lib} threads={t} failed:\n{r.stderr[-3000:]}")
                out.setdefault((lib, t), []).append(json.loads(r.stdout.strip().splitlines()[-1]))
    return out


def medians(results, key):
    return statistics.median(r[key] for r in results)


def stall_mark(results, key):
    """"!" when the runs' values of `key` spread by more than fair_timing.STALL_SPREAD (max/min):
    a stalled or disturbed run, not a property of the kernel; "" otherwise."""
    vals = [r[key] for r in results]
    return "!" if len(vals) > 1 and fair_timing.stalled(vals) else ""
