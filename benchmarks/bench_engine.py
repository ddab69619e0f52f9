"""The model engine's cost: the canonical epoch (Conv2D(32,3x3,relu) -> Flatten ->
Dense(10,softmax), Adam, batch 32, Fashion-MNIST) as Sequential and as the same network written
with the functional API, against another kilnet tree (a build of an older commit) in the same
run. Each configuration runs in its own process, rounds interleaved, medians reported.

    python benchmarks/bench_engine.py [--against /path/to/old/python] [--threads 1 2]
                                      [--samples 19200] [--rounds 3] [--unfused]

--against: a directory that holds an importable `kilnet` (an in-place build of another commit:
`git worktree add /tmp/old <commit> && cd /tmp/old && bash .ci/dev_build.sh`, then
/tmp/old/python). --unfused: this tree again with KILNET_FUSION=0, i.e. the Conv2D -> Flatten ->
Dense group on three layers' kernels instead of the fused one. Also prints each process's peak
RSS (ru_maxrss) after its epochs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from machine_info import machine   # benchmarks/ is on sys.path

CHILD = r"""
import json, resource, sys, time
import numpy as np
import kilnet
from kilnet.datasets import fashion_mnist
form, threads, n, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
kilnet.set_num_threads(threads)
(x, y), _ = fashion_mnist.load_data()
x = (x[:n] / 255.0).reshape(-1, 28, 28, 1).astype(np.float32); y = y[:n]
kilnet.utils.set_random_seed(0)
from kilnet.layers import Conv2D, Dense, Flatten
if form == "sequential":
    m = kilnet.models.Sequential([Conv2D(32, (3, 3), activation="relu", input_shape=(28, 28, 1)), Flatten(),
                                  Dense(10, activation="softmax")])
else:
    i = kilnet.Input((28, 28, 1))
    o = Dense(10, activation="softmax")(Flatten()(Conv2D(32, (3, 3), activation="relu")(i)))
    m = kilnet.Model(i, o)
m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
m.fit(x[:3200], y[:3200], epochs=1, verbose=0)
ts = []
for _ in range(reps):
    t = time.perf_counter(); m.fit(x, y, epochs=1, verbose=0); ts.append(time.perf_counter() - t)
print(json.dumps({"s": ts, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(pythonpath, form, threads, n, reps, extra_env=None):
    env = dict(os.environ, **(extra_env or {}))
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    r = subprocess.run([sys.executable, "-c", CHILD, form, str(threads), str(n), str(reps)],
                       capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--against", default=None, help="PYTHONPATH of another kilnet tree (older commit)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--samples", type=int, default=19200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3, help="timed epochs per process")
    ap.add_argument("--unfused", action="store_true",
                    help="also this tree with KILNET_FUSION=0 (Conv2D -> Flatten -> Dense unfused)")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print(f"{args.samples} samples per epoch; medians over {args.rounds} rounds x {args.reps} epochs")
    configs = [("this", None, "sequential"), ("this", None, "functional")]
    if args.unfused:
        configs.insert(0, ("unfused", None, "sequential"))
    if args.against:
        configs.insert(0, ("against", args.against, "sequential"))
    for threads in args.threads:
        times = {c: [] for c in configs}
        rss = {c: [] for c in configs}
        for _ in range(args.rounds):      # interleaved: a noisy neighbour hits every configuration
            for c in configs:
                out = run(c[1], c[2], threads, args.samples, args.reps,
                          {"KILNET_FUSION": "0"} if c[0] == "unfused" else None)
                times[c] += out["s"]
                rss[c].append(out["rss_mb"])
        base = statistics.median(times[configs[0]])
        for c in configs:
            med = statistics.median(times[c])
            print(f"threads {threads}  {c[0]:8s} {c[2]:11s}  {med:.3f} s  x{med / base:.3f} of {configs[0][0]} "
                  f"{configs[0][2]}  peak RSS {statistics.median(rss[c]):.0f} MB")


if __name__ == "__main__":
    main()
