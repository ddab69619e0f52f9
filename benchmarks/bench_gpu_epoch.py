"""One epoch of the canonical model (Conv2D(32,3x3,relu) → Flatten → Dense(10,softmax), Adam,
sparse cross-entropy) on the GPU, kilnet vs PyTorch CUDA eager, at batch 32 and 256, in one run.

    python benchmarks/bench_gpu_epoch.py [--samples 60000] [--epochs 3]

Data: Fashion-MNIST's shapes (60000 x 28 x 28 x 1, 10 classes). The device machine has no copy
of the dataset, and an epoch's time does not depend on the pixel values, so the images are
uniform random numbers in [0, 1) unless kilnet.datasets finds the real files. Both libraries keep
the training set on the GPU and gather each shuffled batch there. PyTorch's loop is the usual
eager one (zero_grad, forward, loss, backward, Adam step with eps=1e-7 as Keras) without a
per-step .item(): it never waits for the GPU inside the epoch, nor does kilnet's fit.
Reports the median seconds per epoch after a warm-up epoch, and PyTorch/kilnet (> 1: kilnet
faster). TF32 is off in both.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from gpu_timing import HEADER, fmt_row
from machine_info import machine  # noqa: E402  (the host line of the header)


def load(samples):
    try:
        from kilnet.datasets import fashion_mnist
        (x, y), _ = fashion_mnist.load_data()
        x = (x[:samples] / 255.0).reshape(-1, 28, 28, 1).astype(np.float32)
        return x, y[:samples].astype(np.int64), "Fashion-MNIST"
    except Exception:
        rng = np.random.default_rng(0)
        return (rng.random((samples, 28, 28, 1), dtype=np.float32),
                rng.integers(0, 10, samples).astype(np.int64), "random data of Fashion-MNIST's shape")


def kilnet_epoch_times(x, y, batch, epochs):
    import kilnet
    from kilnet.cli import canonical_model
    kilnet.utils.set_random_seed(0)
    with kilnet.device("cuda"):
        model = canonical_model()
    times = []
    for _ in range(epochs + 1):   # the first epoch warms up (allocations, module load)
        t0 = time.perf_counter()
        h = model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]), h.history


def torch_epoch_times(x, y, batch, epochs):
    import torch
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(32 * 26 * 26, 10)).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    lossf = torch.nn.CrossEntropyLoss()
    xd = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(dev)
    yd = torch.from_numpy(y).to(dev)
    n = len(x)
    times = []
    for _ in range(epochs + 1):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        order = torch.randperm(n, device=dev)
        total = torch.zeros((), device=dev)
        for i in range(0, n, batch):
            idx = order[i:i + batch]
            xb, yb = xd[idx], yd[idx]
            opt.zero_grad(set_to_none=True)
            loss = lossf(model(xb), yb)
            loss.backward()
            opt.step()
            total += loss.detach()
        float(total)   # one wait per epoch, like kilnet's
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def rows(samples=60000, epochs=3):
    x, y, what = load(samples)
    flop = ((2 * 26 * 26 * 32 * 9) * 2 + (2 * 21632 * 10) * 3) * len(x)
    for batch in (32, 256):
        k, hist = kilnet_epoch_times(x, y, batch, epochs)
        try:
            t = torch_epoch_times(x, y, batch, epochs)
            ratio = f"{t / k:.2f}x"
        except Exception as e:   # torch missing or broken: report kilnet alone
            t, ratio = float("nan"), f"torch failed: {type(e).__name__}"
        yield (f"canonical epoch, batch {batch} ({len(x)} samples, {what})", f"{k * 1e3:.0f}",
               "PyTorch CUDA eager", f"{t * 1e3:.0f}", ratio,
               f"{flop / k / 1e12:.2f} TFLOP/s; loss {hist['loss'][-1]:.3f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=60000)
    ap.add_argument("--epochs", type=int, default=3)
    a = ap.parse_args()
    print(f"# host: {machine()}")
    print(fmt_row(HEADER))
    for r in rows(a.samples, a.epochs):
        print(fmt_row(r), flush=True)
