"""One epoch of the canonical model (Conv2D(32,3x3,relu) → Flatten → Dense(10,softmax), Adam,
batch 32) on Fashion-MNIST, in kilnet and in PyTorch (CPU) in the same run, at 1 and 2 threads;
with --keras-jax also Keras 3 on JAX (its own child process, pinned to that many cores).

    python benchmarks/bench_epoch.py [--epochs 3] [--threads 1 2] [--limit N] [--keras-jax]
    pytest benchmarks/bench_epoch.py --benchmark-only      (one epoch each, 2 threads)

Every epoch is a round: the libraries take turns epoch by epoch, in an order that rotates every
epoch, and each turn starts only once the other libraries' thread pools are idle
(kilnet.fair_timing.wait_idle; Keras+JAX waits in its process for its turn); a time whose epochs
after the first spread by more than fair_timing.STALL_SPREAD (max/min) is printed with "!" (issue 23).
Reports seconds per epoch (median of the epochs after the first, which warms up), the
kilnet/PyTorch ratio, and the achieved GFLOP/s against the FMA peak of that many threads measured
at the start of the run (machine_info.py: kilnet._cpu.fma_peak_gflops at the SIMD level in use). On a shared
machine it also prints the process CPU seconds of each epoch: at 1 thread these are what the
wall time would be without the other processes (at 2 threads they add up both threads). The arithmetic:
per sample, conv forward 2·26·26·32·9, dense forward 2·21632·10, backward about twice each
(no input gradient for the first layer: conv backward = weight gradient only).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

from kilnet import fair_timing
from machine_info import machine, peak_line, peaks   # benchmarks/ is on sys.path; bench_rnn and
                                                      # bench_small_cnn import machine from here
FLOP_PER_SAMPLE = (2 * 26 * 26 * 32 * 9) * 2 + (2 * 21632 * 10) * 3   # conv fwd+dW, dense fwd+dW+dX


def load(limit=0):
    from kilnet.datasets import fashion_mnist
    (xt, yt), (xe, ye) = fashion_mnist.load_data()
    xt = (xt / 255.0).reshape(-1, 28, 28, 1).astype(np.float32)
    xe = (xe / 255.0).reshape(-1, 28, 28, 1).astype(np.float32)
    if limit:
        xt, yt = xt[:limit], yt[:limit]
    return xt, yt.astype(np.int64), xe, ye.astype(np.int64)


def timed(fn):
    """(wall seconds, process CPU seconds) of fn()."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


# Each library's run: epoch() trains one epoch and returns timed()'s pair, accuracy() tests it.

class KilnetRun:
    name, short = "kilnet", "kilnet"

    def __init__(self, data, threads, seed=0):
        import kilnet
        from kilnet.cli import canonical_model
        from kilnet.utils import set_random_seed
        kilnet.set_num_threads(threads)
        set_random_seed(seed)
        self.xt, self.yt, self.xe, self.ye = data
        self.model = canonical_model()

    def epoch(self):
        return timed(lambda: self.model.fit(self.xt, self.yt, batch_size=32, epochs=1, verbose=0))

    def accuracy(self):
        return self.model.evaluate(self.xe, self.ye, batch_size=256, verbose=0)[1]


def torch_setup(data, threads, seed):
    """torch on `threads` threads and seeded; the data as (X, Y, X test) NCHW tensors and the
    test labels (numpy)."""
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    xt, yt, xe, ye = data
    nchw = lambda a: torch.from_numpy(a.transpose(0, 3, 1, 2).copy())
    return nchw(xt), torch.from_numpy(yt), nchw(xe), ye


class TorchRun:
    """loader=False: a lean loop (a shuffled index tensor, slices of it). loader=True: the loop
    PyTorch's tutorials write (DataLoader over a TensorDataset, shuffle=True, loss.item() per
    step for the running loss), which is what a user's script usually measures."""

    def __init__(self, data, threads, seed=0, loader=False):
        import torch
        self.torch, self.loader = torch, loader
        self.name, self.short = ("torch DataLoader", "loader") if loader else ("torch", "torch")
        self.X, self.Y, self.XE, self.ye = torch_setup(data, threads, seed)
        self.model = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                         torch.nn.Linear(32 * 26 * 26, 10))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3, eps=1e-7)
        self.lossf = torch.nn.CrossEntropyLoss()
        if loader:
            self.batches = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(self.X, self.Y),
                                                       batch_size=32, shuffle=True)

    def epoch(self):
        return timed(self._loader_epoch if self.loader else self._lean_epoch)

    def _lean_epoch(self):
        perm = self.torch.randperm(len(self.X))
        for i in range(0, len(self.X), 32):
            idx = perm[i:i + 32]
            self.opt.zero_grad(set_to_none=True)
            self.lossf(self.model(self.X[idx]), self.Y[idx]).backward()
            self.opt.step()

    def _loader_epoch(self):
        running = 0.0
        for xb, yb in self.batches:
            self.opt.zero_grad()
            loss = self.lossf(self.model(xb), yb)
            loss.backward()
            self.opt.step()
            running += loss.item()

    def accuracy(self):
        with self.torch.no_grad():
            pred = self.model(self.XE).argmax(1).numpy()
        return float((pred == self.ye).mean())


KERAS_SCRIPT = r"""
import json, sys, time
import numpy as np
import keras
limit = int(sys.argv[1])
from kilnet.datasets import fashion_mnist   # the same files and preprocessing as kilnet's run
(xt, yt), (xe, ye) = fashion_mnist.load_data()
xt = (xt / 255.0).reshape(-1, 28, 28, 1).astype(np.float32)
xe = (xe / 255.0).reshape(-1, 28, 28, 1).astype(np.float32)
if limit:
    xt, yt = xt[:limit], yt[:limit]
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(32, 3, activation="relu"),
                          keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
print(json.dumps({"keras": keras.__version__}), flush=True)   # ready
for _ in sys.stdin:   # one epoch per line from the parent, when it is Keras's turn
    t0, c0 = time.perf_counter(), time.process_time()
    model.fit(xt, yt, batch_size=32, epochs=1, verbose=0)
    print(json.dumps({"epoch": [time.perf_counter() - t0, time.process_time() - c0]}), flush=True)
print(json.dumps({"acc": float(model.evaluate(xe, ye, batch_size=256, verbose=0)[1])}), flush=True)
"""


class KerasJaxRun:
    """Keras 3 on JAX, in a child process pinned to `threads` cores (XLA sizes its thread pool
    from the cores it may use) so that its pools never meet kilnet's or PyTorch's; between its
    turns it waits on a line from this process."""
    name, short = "Keras+JAX", "keras"

    def __init__(self, threads, limit=0):
        import subprocess
        import sys
        cores = sorted(os.sched_getaffinity(0))[:threads]
        env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} "
                             f"intra_op_parallelism_threads={threads}")
        self.proc = subprocess.Popen([sys.executable, "-c", KERAS_SCRIPT, str(limit)], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     preexec_fn=lambda: os.sched_setaffinity(0, cores))
        self.reply()   # imported, data loaded, model compiled

    def reply(self):
        """The child's next JSON line (its other output is warnings)."""
        said = []
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
            said.append(line.strip())
        self.proc.wait()
        raise ImportError(f"Keras + JAX run failed: {said[-1:]}")

    def epoch(self):
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return tuple(self.reply()["epoch"])

    def accuracy(self):
        self.proc.stdin.close()   # no more epochs: the child tests and exits
        acc = self.reply()["acc"]
        self.proc.wait()
        return acc


def steady(times):
    return statistics.median(times[1:] if len(times) > 1 else times)


def stall_mark(times):
    """"!" when the epochs after the first spread by more than fair_timing.STALL_SPREAD (max/min)."""
    return "!" if len(times) > 2 and fair_timing.stalled(times[1:]) else ""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3,
                    help="epochs (rounds) per framework and thread count (first is warm-up)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--limit", type=int, default=0, help="use only the first N training images")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--keras-jax", action="store_true",
                    help="also time Keras 3 on JAX (a child process pinned to the same number of cores)")
    ap.add_argument("--torch-loader", action="store_true",
                    help="also time PyTorch's tutorial loop (DataLoader, loss.item() per step)")
    args = ap.parse_args(argv)
    data = load(args.limit)
    n = len(data[0])
    print(f"machine: {machine()}")
    import kilnet
    print(f"kilnet {kilnet.__version__} ({kilnet.simd_level()}); {n} images/epoch, batch 32, {args.epochs} epochs "
          f"each, the libraries taking turns epoch by epoch in a rotating order")
    peak = peaks(args.threads)
    print(peak_line(peak))
    rows = []
    for t in args.threads:
        runs = [KilnetRun(data, t)]
        if not args.no_torch:
            try:
                runs.append(TorchRun(data, t))
                if args.torch_loader:
                    runs.append(TorchRun(data, t, loader=True))
            except ImportError:
                pass
        if args.keras_jax:
            try:
                runs.append(KerasJaxRun(t, args.limit))
            except (ImportError, OSError) as e:
                print(f"   (Keras + JAX not timed: {e})")
        wall, cpu = {r.name: [] for r in runs}, {r.name: [] for r in runs}
        for epoch in range(args.epochs):
            for r in fair_timing.rotate(runs, epoch):   # the order changes every epoch
                fair_timing.wait_idle()   # the previous library's spinning workers are asleep
                w, c = r.epoch()
                wall[r.name].append(w)
                cpu[r.name].append(c)
        row = {"threads": t}
        for r in runs:
            row[r.name] = {"s": steady(wall[r.name]), "all": wall[r.name], "cpu": cpu[r.name], "acc": r.accuracy(),
                           "stall": bool(stall_mark(wall[r.name]))}
        rows.append(row)
        k = row["kilnet"]
        gflops = FLOP_PER_SAMPLE * n / k["s"] / 1e9
        line = (f"threads={t}: kilnet {k['s']:.2f}{stall_mark(k['all'])} s/epoch ({gflops:.1f} GFLOP/s, "
                f"{100 * gflops / peak[t]:.0f}% of the {t}-thread peak), test acc {k['acc']:.4f}")
        for r in runs[1:]:
            o = row[r.name]
            line += (f" | {r.name} {o['s']:.2f}{stall_mark(o['all'])} s/epoch, test acc {o['acc']:.4f}"
                     f" | {r.short}/kilnet = {o['s'] / k['s']:.2f}x")
        print(line, flush=True)
        print("   all epochs: " + ", ".join(f"{r.name} {[round(v, 2) for v in wall[r.name]]}" for r in runs))
        print("   CPU s/epoch: " + ", ".join(f"{r.name} {[round(v, 2) for v in cpu[r.name]]}" for r in runs),
              flush=True)
    print(f"! = that library's epochs after the first spread by more than {fair_timing.STALL_SPREAD}x "
          f"(max/min): a stall or a busy machine, not the library's speed")
    return rows


def test_epoch_kilnet(benchmark):
    run = KilnetRun(load(), os.cpu_count() or 1)
    benchmark.pedantic(run.epoch, rounds=1, iterations=1)


def test_epoch_torch(benchmark):
    import pytest
    pytest.importorskip("torch")
    run = TorchRun(load(), os.cpu_count() or 1)
    benchmark.pedantic(run.epoch, rounds=1, iterations=1)


if __name__ == "__main__":
    main()
