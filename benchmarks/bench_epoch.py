"""One epoch of the canonical model (Conv2D(32,3x3,relu) → Flatten → Dense(10,softmax), Adam,
batch 32) on Fashion-MNIST, in kilnet and in PyTorch (CPU) in the same run, at 1 and 2 threads;
with --keras-jax also Keras 3 on JAX (its own child process, pinned to that many cores).

    python benchmarks/bench_epoch.py [--epochs 3] [--threads 1 2] [--limit N] [--keras-jax]
    pytest benchmarks/bench_epoch.py --benchmark-only      (one epoch each, 2 threads)

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
import os
import statistics
import time

import numpy as np

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


def kilnet_epochs(data, threads, epochs, seed=0):
    import kilnet
    from kilnet.cli import canonical_model
    from kilnet.utils import set_random_seed
    kilnet.set_num_threads(threads)
    set_random_seed(seed)
    xt, yt, xe, ye = data
    model = canonical_model()
    times, cpu = [], []
    for _ in range(epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        model.fit(xt, yt, batch_size=32, epochs=1, verbose=0)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    acc = model.evaluate(xe, ye, batch_size=256, verbose=0)[1]
    return times, acc, cpu


def torch_epochs(data, threads, epochs, seed=0, loader=False):
    """loader=False: a lean loop (a shuffled index tensor, slices of it). loader=True: the loop
    PyTorch's tutorials write (DataLoader over a TensorDataset, shuffle=True, loss.item() per
    step for the running loss), which is what a user's script usually measures."""
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    xt, yt, xe, ye = data
    X = torch.from_numpy(xt.transpose(0, 3, 1, 2).copy())
    Y = torch.from_numpy(yt)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(32 * 26 * 26, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    lossf = torch.nn.CrossEntropyLoss()
    if loader:
        batches = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=32, shuffle=True)
    times, cpu = [], []
    for _ in range(epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        if loader:
            running = 0.0
            for xb, yb in batches:
                opt.zero_grad()
                loss = lossf(model(xb), yb)
                loss.backward()
                opt.step()
                running += loss.item()
        else:
            perm = torch.randperm(len(X))
            for i in range(0, len(X), 32):
                idx = perm[i:i + 32]
                opt.zero_grad(set_to_none=True)
                loss = lossf(model(X[idx]), Y[idx])
                loss.backward()
                opt.step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    with torch.no_grad():
        pred = model(torch.from_numpy(xe.transpose(0, 3, 1, 2).copy())).argmax(1).numpy()
    return times, float((pred == ye).mean()), cpu


KERAS_SCRIPT = r"""
import json, os, sys, time
import numpy as np
import keras
threads, epochs, limit = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
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
times, cpu = [], []
for _ in range(epochs):
    t0, c0 = time.perf_counter(), time.process_time()
    model.fit(xt, yt, batch_size=32, epochs=1, verbose=0)
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
acc = float(model.evaluate(xe, ye, batch_size=256, verbose=0)[1])
print(json.dumps({"times": times, "acc": acc, "cpu": cpu, "keras": keras.__version__}))
"""


def keras_jax_epochs(threads, epochs, limit=0):
    """Keras 3 on JAX, in a child process pinned to `threads` cores (XLA sizes its thread pool
    from the cores it may use) so that its pools never meet kilnet's or PyTorch's."""
    import json
    import subprocess
    import sys
    cores = sorted(os.sched_getaffinity(0))[:threads]
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} "
                         f"intra_op_parallelism_threads={threads}")
    r = subprocess.run([sys.executable, "-c", KERAS_SCRIPT, str(threads), str(epochs), str(limit)],
                       env=env, capture_output=True, text=True, timeout=3600,
                       preexec_fn=lambda: os.sched_setaffinity(0, cores))
    if r.returncode != 0:
        raise ImportError(f"Keras + JAX run failed: {r.stderr.strip().splitlines()[-1:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return out["times"], out["acc"], out["cpu"]


def steady(times):
    return statistics.median(times[1:] if len(times) > 1 else times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3, help="epochs per framework and thread count (first is warm-up)")
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
    print(f"kilnet {kilnet.__version__} ({kilnet.simd_level()}); {n} images/epoch, batch 32, {args.epochs} epochs each")
    peak = peaks(args.threads)
    print(peak_line(peak))
    rows = []
    for t in args.threads:
        kt, kacc, kc = kilnet_epochs(data, t, args.epochs)
        row = {"threads": t, "kilnet_s": steady(kt), "kilnet_all": kt, "kilnet_acc": kacc, "kilnet_cpu": kc}
        if not args.no_torch:
            try:
                tt, tacc, tc = torch_epochs(data, t, args.epochs)
                row.update(torch_s=steady(tt), torch_all=tt, torch_acc=tacc, torch_cpu=tc)
                if args.torch_loader:
                    lt, lacc, lc = torch_epochs(data, t, args.epochs, loader=True)
                    row.update(loader_s=steady(lt), loader_all=lt, loader_acc=lacc, loader_cpu=lc)
            except ImportError:
                pass
        if args.keras_jax:
            try:
                jt, jacc, jc = keras_jax_epochs(t, args.epochs, args.limit)
                row.update(keras_s=steady(jt), keras_all=jt, keras_acc=jacc, keras_cpu=jc)
            except (ImportError, OSError) as e:
                print(f"   (Keras + JAX not timed: {e})")
        rows.append(row)
        gflops = FLOP_PER_SAMPLE * n / row["kilnet_s"] / 1e9
        line = (f"threads={t}: kilnet {row['kilnet_s']:.2f} s/epoch ({gflops:.1f} GFLOP/s, "
                f"{100 * gflops / peak[t]:.0f}% of the {t}-thread peak), test acc {kacc:.4f}")
        if "torch_s" in row:
            line += (f" | torch {row['torch_s']:.2f} s/epoch, test acc {row['torch_acc']:.4f}"
                     f" | torch/kilnet = {row['torch_s'] / row['kilnet_s']:.2f}x")
        if "keras_s" in row:
            line += (f" | Keras+JAX {row['keras_s']:.2f} s/epoch, test acc {row['keras_acc']:.4f}"
                     f" | keras/kilnet = {row['keras_s'] / row['kilnet_s']:.2f}x")
        if "loader_s" in row:
            line += (f" | torch DataLoader loop {row['loader_s']:.2f} s/epoch, test acc {row['loader_acc']:.4f}"
                     f" | {row['loader_s'] / row['kilnet_s']:.2f}x")
        print(line, flush=True)
        print(f"   all epochs: kilnet {[round(v, 2) for v in kt]}" +
              (f", torch {[round(v, 2) for v in row['torch_all']]}" if "torch_all" in row else "") +
              (f", torch DataLoader {[round(v, 2) for v in row['loader_all']]}" if "loader_all" in row else "") +
              (f", Keras+JAX {[round(v, 2) for v in row['keras_all']]}" if "keras_all" in row else ""))
        print(f"   CPU s/epoch: kilnet {[round(v, 2) for v in kc]}" +
              (f", torch {[round(v, 2) for v in row['torch_cpu']]}" if "torch_cpu" in row else "") +
              (f", torch DataLoader {[round(v, 2) for v in row['loader_cpu']]}" if "loader_cpu" in row else "") +
              (f", Keras+JAX {[round(v, 2) for v in row['keras_cpu']]}" if "keras_cpu" in row else ""), flush=True)
    return rows


def test_epoch_kilnet(benchmark):
    data = load()
    benchmark.pedantic(lambda: kilnet_epochs(data, os.cpu_count() or 1, 1), rounds=1, iterations=1)


def test_epoch_torch(benchmark):
    import pytest
    pytest.importorskip("torch")
    data = load()
    benchmark.pedantic(lambda: torch_epochs(data, os.cpu_count() or 1, 1), rounds=1, iterations=1)


if __name__ == "__main__":
    main()
