"""What feeding fit from Python data code costs: the canonical epoch (Conv2D(32,3x3,relu) ->
Flatten -> Dense(10,softmax), Adam, batch 32, Fashion-MNIST) fed by arrays, by a Python
generator, by a kilnet.utils.PyDataset and by a torch DataLoader (batched sampler, the fast
way to use one), each shuffled per epoch. One process per thread count; inside it the forms
take turns epoch by epoch on one model (interleaved rounds, in an order that rotates every
round, each epoch starting once the other pools are idle: kilnet.fair_timing, so a noisy
neighbour hits every form), medians reported; "!" marks a median whose epochs spread by more
than fair_timing.STALL_SPREAD (a stall or a busy machine, issue 23).

    python benchmarks/bench_data_pipelines.py [--threads 1 2] [--samples 19200] [--rounds 9]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from kilnet import fair_timing
from machine_info import machine   # benchmarks/ is on sys.path

CHILD = r"""
import json, sys, time
import numpy as np
import kilnet
from kilnet import fair_timing
from kilnet.datasets import fashion_mnist
from kilnet.layers import Conv2D, Dense, Flatten
threads, n, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
kilnet.set_num_threads(threads)
(x, y), _ = fashion_mnist.load_data()
x = (x[:n] / 255.0).reshape(-1, 28, 28, 1).astype(np.float32); y = y[:n]
kilnet.utils.set_random_seed(0)
m = kilnet.models.Sequential([Conv2D(32, (3, 3), activation="relu", input_shape=(28, 28, 1)), Flatten(),
                              Dense(10, activation="softmax")])
m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
rng = np.random.default_rng(0)
B = 32

def generator():
    order = rng.permutation(n)
    for i in range(0, n, B):
        idx = order[i:i + B]
        yield x[idx], y[idx]

class Batches(kilnet.utils.PyDataset):
    def __init__(self):
        super().__init__()
        self.order = rng.permutation(n)
    def __len__(self):
        return -(-n // B)
    def __getitem__(self, i):
        idx = self.order[i * B:(i + 1) * B]
        return x[idx], y[idx]
    def on_epoch_end(self):
        self.order = rng.permutation(n)

forms = {"arrays": lambda: m.fit(x, y, batch_size=B, epochs=1, verbose=0),
         "generator": lambda: m.fit(generator(), epochs=1, verbose=0),
         "PyDataset": lambda: m.fit(ds, epochs=1, shuffle=False, verbose=0)}
ds = Batches()
try:
    import torch
    torch.set_num_threads(1)
    class Rows(torch.utils.data.Dataset):    # indexed by a whole batch of indices at once
        def __len__(self):
            return n
        def __getitem__(self, idx):
            return torch.from_numpy(x[idx]), torch.from_numpy(y[idx])
    sampler = torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(range(n)), B, drop_last=False)
    loader = torch.utils.data.DataLoader(Rows(), batch_size=None, sampler=sampler)
    forms["DataLoader"] = lambda: m.fit(loader, epochs=1, verbose=0)
except ImportError:
    pass
m.fit(x[:3200], y[:3200], epochs=1, verbose=0)          # warm-up: every form once
for f in forms.values():
    f()
times = {k: [] for k in forms}
for r in range(rounds):
    for k in fair_timing.rotate(forms, r):
        fair_timing.wait_idle()
        t = time.perf_counter(); forms[k](); times[k].append(time.perf_counter() - t)
print(json.dumps(times))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--samples", type=int, default=19200)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print(f"{args.samples} samples per epoch, batch 32; medians over {args.rounds} interleaved epochs per form")
    for threads in args.threads:
        r = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(args.samples), str(args.rounds)],
                           capture_output=True, text=True, timeout=3600)
        if r.returncode:
            raise RuntimeError(r.stderr[-2000:])
        times = json.loads(r.stdout.strip().splitlines()[-1])
        base = statistics.median(times["arrays"])
        for k, ts in times.items():
            med = statistics.median(ts)
            # paired: each round's epoch over the same round's array epoch (next to it in time,
            # so a host that slows down for a while slows both), then the median of those
            paired = statistics.median(t / a for t, a in zip(ts, times["arrays"]))
            mark = "!" if fair_timing.stalled(ts) else ""
            print(f"threads {threads}  {k:10s}  median {med:.3f}{mark} s  (best {min(ts):.3f})  "
                  f"x{med / base:.3f} of arrays  (paired x{paired:.3f})")
    print(f"! = that form's epochs spread by more than {fair_timing.STALL_SPREAD}x (max/min): "
          "a stall or a busy machine, not the pipeline")


if __name__ == "__main__":
    main()
