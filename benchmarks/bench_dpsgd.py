"""DP-SGD's cost: one epoch of the canonical CNN (Conv2D(32,3x3,relu) → Flatten → Dense(10,softmax))
on Fashion-MNIST with kilnet.privacy.DPAdam against a plain Adam epoch, and the same pair in
PyTorch with Opacus' PrivacyEngine (the yardstick), in one process, interleaved.

    python benchmarks/bench_dpsgd.py [--threads 1] [--batch 32] [--limit 20000] [--epochs 2] [--rounds 1]

Both DP runs use Poisson sampling (expected batch `--batch`), clip 1.0, noise 1.1. Opacus
computes per-sample gradients with its grad samplers (hooks; for nn.Linear an einsum per
sample, "ghost clipping" off: the default `grad_sample_mode="hooks"`); kilnet uses the ghost
norm for Dense and the conv kernel per example for Conv2D (kilnet/privacy/dpsgd.py). Each of
the four trainings keeps its model; in every round each runs --epochs epochs, in an order that
rotates every round, its turn starting once the other library's idle workers stopped spinning
(kilnet.fair_timing). Reports the median seconds per epoch of the epochs after each model's
first (a warm-up) and the DP/plain ratios; "!" marks a time whose round medians spread by more
than fair_timing.STALL_SPREAD (a stall or a busy machine, issue 23).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import numpy as np

from kilnet import fair_timing
from machine_info import machine   # benchmarks/ is on sys.path


def load(limit=0):
    from kilnet.datasets import fashion_mnist
    (xt, yt), (xe, ye) = fashion_mnist.load_data()
    xt = (xt / 255.0).reshape(-1, 28, 28, 1).astype(np.float32)
    if limit:
        xt, yt = xt[:limit], yt[:limit]
    return xt, yt.astype(np.int64)


def kilnet_epoch(data, batch, private):
    """A function running one training epoch of a freshly built kilnet model."""
    import kilnet
    from kilnet.cli import canonical_model
    from kilnet.privacy import DPAdam
    kilnet.utils.set_random_seed(0)
    xt, yt = data
    model = canonical_model()
    opt = DPAdam(1.0, 1.1, learning_rate=1e-3, seed=0) if private else kilnet.optimizers.Adam(1e-3)
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return lambda: model.fit(xt, yt, batch_size=batch, epochs=1, verbose=0)


def torch_epoch(data, batch, private):
    """A function running one training epoch of a freshly built torch model."""
    import torch
    torch.manual_seed(0)
    xt, yt = data
    X = torch.from_numpy(xt.transpose(0, 3, 1, 2).copy())
    Y = torch.from_numpy(yt)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(32 * 26 * 26, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=batch, shuffle=True)
    if private:
        from opacus import PrivacyEngine
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            engine = PrivacyEngine(accountant="rdp")
            model, opt, loader = engine.make_private(module=model, optimizer=opt, data_loader=loader,
                                                     noise_multiplier=1.1, max_grad_norm=1.0, poisson_sampling=True)
    lossf = torch.nn.CrossEntropyLoss()

    def epoch():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for xb, yb in loader:
                if len(xb) == 0:
                    continue
                opt.zero_grad()
                loss = lossf(model(xb), yb)
                loss.backward()
                opt.step()
    return epoch


def summary(rounds):
    """(median seconds per epoch, "!" or "") of one training's epoch times, a list per round; the
    model's first epoch is a warm-up, left out unless it is the only one."""
    if sum(map(len, rounds)) > 1:
        rounds = [rounds[0][1:]] + rounds[1:]
    rounds = [ts for ts in rounds if ts]
    med = statistics.median(t for ts in rounds for t in ts)
    return med, "!" if fair_timing.stalled([statistics.median(ts) for ts in rounds]) else ""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, nargs="+", default=[32])
    ap.add_argument("--limit", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per training per round")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds")
    args = ap.parse_args(argv)
    import kilnet
    import torch
    kilnet.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    data = load(args.limit)
    print(f"machine: {machine()}")
    print(f"kilnet {kilnet.__version__} ({kilnet.simd_level()}), torch {torch.__version__}, "
          f"{len(data[0])} images/epoch, {args.threads} thread(s); {args.rounds} interleaved round(s) of "
          f"{args.epochs} epoch(s) per training, median of the epochs after each model's first")
    try:
        import opacus
        print(f"opacus {opacus.__version__}")
    except ImportError:
        opacus = None
        print("opacus not installed: PyTorch DP not timed (pip install opacus)")
    for batch in args.batch:
        runs = [("kilnet", False, kilnet_epoch), ("kilnet", True, kilnet_epoch), ("torch", False, torch_epoch)]
        if opacus is not None:
            runs.append(("torch", True, torch_epoch))
        epoch = {(lib, private): fn(data, batch, private) for lib, private, fn in runs}
        times = {key: [] for key in epoch}   # per round: that round's epoch times
        for r in range(args.rounds):
            for key in fair_timing.rotate(epoch, r):   # the order changes every round
                fair_timing.wait_idle()   # the other library's idle workers stopped spinning
                times[key].append([])
                for _ in range(args.epochs):
                    t0 = time.perf_counter()
                    epoch[key]()
                    times[key][-1].append(time.perf_counter() - t0)
        res, mark = {}, {}
        for key, rounds in times.items():
            res[key], mark[key] = summary(rounds)

        def fmt(key):
            return f"{res[key]:.2f}{mark[key]} s"
        line = (f"batch {batch:4d}: kilnet plain {fmt(('kilnet', False))}, DP {fmt(('kilnet', True))} "
                f"(x{res['kilnet', True] / res['kilnet', False]:.2f}); torch plain {fmt(('torch', False))}")
        if ("torch", True) in res:
            line += (f", Opacus {fmt(('torch', True))} (x{res['torch', True] / res['torch', False]:.2f}); "
                     f"kilnet DP / Opacus {res['kilnet', True] / res['torch', True]:.2f}")
        print(line, flush=True)
    print(f"! = that time's round medians spread by more than {fair_timing.STALL_SPREAD}x (max/min): "
          "a stall or a busy machine, not the training")


if __name__ == "__main__":
    main()
