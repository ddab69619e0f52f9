"""The example small CNN (kilnet.cli.small_cnn_model, 87,594 parameters) trained on
Fashion-MNIST by kilnet and by PyTorch (CPU) with the same architecture and recipe, in the same
process, taking turns epoch by epoch (so that both see the same machine load) in an order that
rotates every epoch, each turn starting once the other's thread pool is idle
(kilnet.fair_timing.wait_idle; issue 23):

    Conv 3x3 32 → BatchNorm → ReLU → MaxPool 2 → Conv 3x3 64 → BatchNorm → ReLU → MaxPool 2
    → Dropout 0.25 → Conv 3x3 64 → BatchNorm → ReLU → Dropout 0.25 → Flatten → Dense 10
    (convolutions 'same', without bias)
    Adam (beta 0.9/0.999), learning rate 1e-3 cosine-decayed to 0 per step over all epochs,
    batch 64, shuffled every epoch, Glorot-uniform kernels, BatchNorm momentum 0.99 (torch: 0.01)
    and epsilon 1e-3.

    python benchmarks/bench_small_cnn.py [--epochs 15] [--threads 2] [--limit N] [--json out.json]
                                         [--frameworks kilnet torch]
    python benchmarks/bench_small_cnn.py --profile [--threads 1]    (kilnet's time per layer)

After every epoch the test accuracy is measured (not counted in the training time). Reports
per framework: seconds per epoch, total training wall time, the test accuracy after each
epoch, and the first epoch (and training time up to it) at which test accuracy reached 0.925.
Seconds per epoch get a "!" when the epochs after the first spread by more than
fair_timing.STALL_SPREAD (max/min): a stall or a busy machine, not the framework.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np

from bench_epoch import load, machine, stall_mark, torch_setup   # the same data preparation, machine line and "!"
from kilnet import fair_timing

TARGET = 0.925


class KilnetTrainer:
    name = "kilnet"

    def __init__(self, data, epochs, batch_size, threads, seed=0):
        import kilnet
        from kilnet.cli import small_cnn_model
        from kilnet.utils import set_random_seed
        kilnet.set_num_threads(threads)
        set_random_seed(seed)
        self.xt, self.yt, self.xe, self.ye = data
        self.batch_size = batch_size
        self.model = small_cnn_model(epochs, math.ceil(len(self.xt) / batch_size))
        self.params = self.model.count_params()

    def train_epoch(self, epoch):
        # one fit call per epoch; the optimizer (and its schedule) carries on between calls
        self.model.fit(self.xt, self.yt, batch_size=self.batch_size, epochs=epoch + 1, initial_epoch=epoch, verbose=0)

    def test_accuracy(self):
        return self.model.evaluate(self.xe, self.ye, batch_size=500, verbose=0)[1]


def torch_model():
    import torch
    nn = torch.nn

    def conv_bn_relu(cin, cout):
        # Keras BatchNormalization momentum 0.99 is torch's momentum 0.01 (the weight of the batch).
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01),
                nn.ReLU()]

    model = nn.Sequential(*conv_bn_relu(1, 32), nn.MaxPool2d(2),
                          *conv_bn_relu(32, 64), nn.MaxPool2d(2), nn.Dropout(0.25),
                          *conv_bn_relu(64, 64), nn.Dropout(0.25),
                          nn.Flatten(), nn.Linear(64 * 7 * 7, 10))
    for m in model.modules():   # Keras's initializers: Glorot-uniform kernels, zero biases
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


class TorchTrainer:
    name = "torch"

    def __init__(self, data, epochs, batch_size, threads, seed=0):
        import torch
        self.torch = torch
        self.X, self.Y, self.XE, self.ye = torch_setup(data, threads, seed)
        self.batch_size = batch_size
        self.model = torch_model()
        steps = epochs * math.ceil(len(self.X) / batch_size)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3, eps=1e-7)
        # Keras's CosineDecay(1e-3, steps) evaluated at the number of steps done so far.
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps)))
        self.params = sum(p.numel() for p in self.model.parameters()) + \
            sum(b.numel() for b in self.model.buffers() if b.dtype.is_floating_point)

    def train_epoch(self, epoch):
        torch, bs = self.torch, self.batch_size
        self.model.train()
        perm = torch.randperm(len(self.X))
        for i in range(0, len(self.X), bs):
            idx = perm[i:i + bs]
            self.opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(self.model(self.X[idx]), self.Y[idx]).backward()
            self.opt.step()
            self.sched.step()

    def test_accuracy(self):
        self.model.eval()
        with self.torch.no_grad():
            pred = self.torch.cat([self.model(self.XE[i:i + 500]).argmax(1) for i in range(0, len(self.XE), 500)])
        return float((pred.numpy() == self.ye).mean())


def profile_layers(batch_size=64, steps=20, threads=1):
    """Where a kilnet training step goes, layer by layer: thread CPU time (other processes on a
    shared machine do not count) of forward(training=True) and backward, median over steps."""
    import statistics

    import kilnet
    from kilnet.cli import small_cnn_model
    kilnet.set_num_threads(threads)
    model = small_cnn_model()
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(batch_size, 28, 28, 1)).astype(np.float32)
    times = {l.name: ([], []) for l in model.layers}
    for _ in range(steps + 2):
        h = x
        for layer in model.layers:
            t0 = time.thread_time()
            h = layer.forward(h, True)
            times[layer.name][0].append(time.thread_time() - t0)
        g = rng.standard_normal(h.shape).astype(np.float32)
        for i in range(len(model.layers) - 1, -1, -1):
            t0 = time.thread_time()
            g = model.layers[i].backward(g, need_dx=i > 0)
            times[model.layers[i].name][1].append(time.thread_time() - t0)
    print(f"kilnet small CNN, one step of batch {batch_size}, {threads} thread(s): thread CPU ms (median of {steps})")
    total = 0.0
    for layer in model.layers:
        f, b = (statistics.median(v[2:]) * 1e3 for v in times[layer.name])
        total += f + b
        print(f"  {layer.name:24s} {type(layer).__name__:20s} forward {f:7.3f}  backward {b:7.3f}")
    print(f"  total {total:.1f} ms per step")


def summarize(name, log, params):
    total = sum(e["seconds"] for e in log)
    reached = next((i for i, e in enumerate(log) if e["test_accuracy"] >= TARGET), None)
    row = {"framework": name, "params": params, "epochs": len(log), "train_seconds": total,
           "seconds_per_epoch": total / max(len(log), 1), "final_test_accuracy": log[-1]["test_accuracy"],
           "best_test_accuracy": max(e["test_accuracy"] for e in log), "per_epoch": log,
           "first_epoch_at_target": None if reached is None else reached + 1,
           "train_seconds_to_target": None if reached is None else sum(e["seconds"] for e in log[:reached + 1])}
    mark = stall_mark([e["seconds"] for e in log])
    row["stall"] = bool(mark)
    print(f"{name}: {params} params, {len(log)} epochs in {total:.0f}s ({row['seconds_per_epoch']:.1f}{mark} s/epoch), "
          f"final test accuracy {row['final_test_accuracy']:.4f}, best {row['best_test_accuracy']:.4f}, "
          + (f"reached {TARGET} at epoch {row['first_epoch_at_target']} after {row['train_seconds_to_target']:.0f}s"
             if reached is not None else f"never reached {TARGET}"), flush=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N training images")
    ap.add_argument("--frameworks", nargs="+", default=["kilnet", "torch"], choices=["kilnet", "torch"])
    ap.add_argument("--json", default="", help="write the results to this JSON file")
    ap.add_argument("--profile", action="store_true", help="only print kilnet's per-layer time for one step")
    args = ap.parse_args(argv)
    if args.profile:
        print(f"machine: {machine()}")
        return profile_layers(args.batch_size, threads=args.threads)
    import kilnet
    data = load(args.limit)
    print(f"machine: {machine()}; kilnet {kilnet.__version__} ({kilnet.simd_level()}), {args.threads} threads; "
          f"{len(data[0])} training images, batch {args.batch_size}, {args.epochs} epochs", flush=True)
    trainers = []
    for fw in args.frameworks:
        try:
            trainers.append((KilnetTrainer if fw == "kilnet" else TorchTrainer)(
                data, args.epochs, args.batch_size, args.threads))
        except ImportError as e:
            print(f"{fw}: skipped ({e})")
    logs = {t.name: [] for t in trainers}
    for epoch in range(args.epochs):
        for t in fair_timing.rotate(trainers, epoch):   # turns, epoch by epoch, in an order that rotates
            fair_timing.wait_idle()   # the other framework's spinning workers are asleep
            t0 = time.perf_counter()
            t.train_epoch(epoch)
            seconds = time.perf_counter() - t0
            acc = t.test_accuracy()   # not timed
            logs[t.name].append({"epoch": epoch + 1, "seconds": seconds, "test_accuracy": acc,
                                 "load_average": os.getloadavg()[0]})
            print(f"  {t.name} epoch {epoch + 1}: {seconds:.1f}s, test accuracy {acc:.4f} "
                  f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    rows = [summarize(t.name, logs[t.name], t.params) for t in trainers]
    print(f"! = that framework's epochs after the first spread by more than {fair_timing.STALL_SPREAD}x (max/min): "
          "a stall or a busy machine, not the framework's speed")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "args": vars(args), "results": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
