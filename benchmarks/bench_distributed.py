"""Data parallelism on one machine: the canonical model (Conv2D(32,3x3,relu) → Flatten →
Dense(10,softmax), Adam) on Fashion-MNIST, trained by 1 rank x 2 threads versus 2 ranks x 1
thread (`mpirun -n 2`, fit(distributed=True)), and the time each step spends waiting for the
gradient all-reduce.

    python benchmarks/bench_distributed.py [--limit 12000] [--epochs 4] [--rounds 3]

Each configuration runs as its own `mpirun` job (KILNET_NUM_THREADS / OMP_NUM_THREADS set for
the ranks); the configurations are interleaved, `--rounds` times, so that a change in the load
of a shared machine hits all of them. Within a job the first epoch warms up and is dropped;
reported: samples/s (median over the later epochs of all rounds), per step the time rank 0
waited in the gradient reduction (Waitall on the buckets' Iallreduce) and in the other
collectives (the per-step loss/metric sums, the epoch-order broadcast), and the process CPU
seconds per sample summed over ranks (what the run costs when other processes compete for
the cores).

Configurations (global batch = per-rank batch x ranks):
  1x2 b64    1 rank, 2 threads, batch 64            (the same updates as 2x1 b32)
  2x1 b32    2 ranks, 1 thread, batch 32 per rank   (global batch 64)
  2x1 b32 1B 2 ranks, one bucket at the end of backward (KILNET_BUCKET_MB=1000): no overlap
  1x2 b32    1 rank, 2 threads, batch 32            (the canonical run's batch)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from machine_info import machine   # benchmarks/ is on sys.path

CONFIGS = [  # name, ranks, threads per rank, batch per rank, extra environment
    ("1x2 b64", 1, 2, 64, {}),
    ("2x1 b32", 2, 1, 32, {}),
    ("2x1 b32 1B", 2, 1, 32, {"KILNET_BUCKET_MB": "1000"}),
    ("1x2 b32", 1, 2, 32, {}),
]


def worker(args):
    import numpy as np

    from kilnet import distributed as dist
    from kilnet.callbacks import Callback
    from kilnet.cli import canonical_model
    from kilnet.datasets import fashion_mnist
    from kilnet.utils import set_random_seed
    r, size = dist.init()
    (xt, yt), _ = fashion_mnist.load_data()
    xt = (xt[:args.limit] / 255.0).reshape(-1, 28, 28, 1).astype(np.float32)
    yt = yt[:args.limit].astype(np.int64)
    set_random_seed(0)
    model = canonical_model()
    rows = []

    class Timer(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0, self.c0, self.k0 = time.perf_counter(), time.process_time(), dist.comm_timers()

        def on_epoch_end(self, epoch, logs=None):
            t, c, k = time.perf_counter() - self.t0, time.process_time() - self.c0, dist.comm_timers()
            d = {key: k.get(key, 0.0) - self.k0.get(key, 0.0) for key in k}
            rows.append({"seconds": t, "cpu": c, "wait": d.get("Iallreduce wait", 0.0),
                         "other": d.get("other collectives", 0.0), "loss": logs["loss"]})

    steps = -(-len(xt) // (args.batch * size))
    # The all-reduce alone: the model's gradient buffer, in place, after a barrier (no compute
    # in between, so no waiting for a slower rank): the price of the communication itself.
    alone = []
    if size > 1:
        from mpi4py import MPI
        model._consolidate()
        g = np.ones(model._params.size, np.float32)
        for _ in range(60):
            MPI.COMM_WORLD.Barrier()
            t = time.perf_counter()
            MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, g, op=MPI.SUM)
            alone.append(time.perf_counter() - t)
    model.fit(xt, yt, batch_size=args.batch, epochs=args.epochs, verbose=0, distributed=True,
              callbacks=[Timer()])
    cpu = np.array([row["cpu"] for row in rows], np.float64)
    total_cpu = dist.allreduce_mean(cpu) * size   # the CPU seconds of all ranks together
    if r == 0:
        for row, c in zip(rows, total_cpu):
            row["cpu_all"] = float(c)
        print("RESULT " + json.dumps({"rows": rows, "steps": steps, "samples": len(xt), "alone": alone,
                                      "params": int(model._params.size)}), flush=True)


def run_config(name, ranks, threads, batch, extra, args):
    # The ranks import the kilnet this process imports: the installed one, or the in-place build
    # when run with PYTHONPATH=python (the environment, PYTHONPATH included, goes to the ranks).
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               KILNET_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads), **extra)
    cmd = [shutil.which("mpirun"), "-n", str(ranks), "--oversubscribe", "--bind-to", "none",
           sys.executable, os.path.abspath(__file__), "--worker", "--batch", str(batch),
           "--limit", str(args.limit), "--epochs", str(args.epochs)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
    if p.returncode != 0 or line is None:
        raise RuntimeError(f"{name} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return json.loads(line[len("RESULT "):])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=12000, help="training images (default 12000)")
    ap.add_argument("--epochs", type=int, default=4, help="epochs per job, the first dropped (default 4)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repetitions (default 3)")
    ap.add_argument("--only", nargs="*", default=None, help="configuration names to run")
    ap.add_argument("--max-load", type=float, default=1e9,
                    help="before each job wait (up to --wait s) until the 1-minute load is below this")
    ap.add_argument("--wait", type=float, default=120.0, help="longest wait for --max-load (default 120 s)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=32, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if shutil.which("mpirun") is None:
        sys.exit("needs Open MPI's mpirun (apt-get install openmpi-bin libopenmpi-dev) and mpi4py")
    print(f"machine: {machine()}", flush=True)
    configs = [c for c in CONFIGS if args.only is None or c[0] in args.only]
    results = {c[0]: [] for c in configs}
    alone = {c[0]: [] for c in configs}
    load = []
    params = 0
    for rnd in range(args.rounds):
        for cfg in configs:
            waited = time.monotonic()
            while os.getloadavg()[0] > args.max_load and time.monotonic() - waited < args.wait:
                time.sleep(5)
            load.append(os.getloadavg()[0])
            res = run_config(*cfg, args)
            results[cfg[0]] += [(row, res["steps"], res["samples"]) for row in res["rows"][1:]]
            alone[cfg[0]] += res["alone"]
            params = res["params"]
            print(f"round {rnd + 1} {cfg[0]}: " + ", ".join(f"{row['seconds']:.2f}s" for row in res["rows"]),
                  flush=True)
    print(f"\n{args.limit} images, {args.epochs - 1} timed epochs x {args.rounds} rounds per configuration; "
          f"load average {min(load):.1f}-{max(load):.1f} on {os.cpu_count()} CPUs\n")
    print("| ranks x threads, batch per rank | samples/s median | best epoch | grad wait ms/step median (best) | "
          "other collectives ms/step | CPU ms/sample, all ranks |")
    print("|---|---|---|---|---|---|")
    for name, *_ in configs:
        rows = results[name]
        sps = [n / row["seconds"] for row, _, n in rows]
        wait = [row["wait"] / steps * 1e3 for row, steps, _ in rows]
        other = [row["other"] / steps * 1e3 for row, steps, _ in rows]
        cpu = [row["cpu_all"] / n * 1e3 for row, _, n in rows]
        print(f"| {name} | {statistics.median(sps):.0f} | {max(sps):.0f} | "
              f"{statistics.median(wait):.2f} ({min(wait):.2f}) | {statistics.median(other):.2f} | "
              f"{statistics.median(cpu):.3f} |")
    for name, a in alone.items():
        if a:
            print(f"\n{name}: Allreduce of the {params:,}-float gradient buffer alone ({params * 4 / 1e6:.2f} MB), "
                  f"{len(a)} times: median {statistics.median(a) * 1e3:.3f} ms, best {min(a) * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
