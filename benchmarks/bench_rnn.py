"""Recurrent layers vs PyTorch (CPU), in the same process.

    python benchmarks/bench_rnn.py speed [--threads 1 2] [--rounds 6]
    python benchmarks/bench_rnn.py accuracy [--epochs 5] [--batch-size 64] [--threads 1] [--limit N]
    python benchmarks/bench_rnn.py mask [--threads 1 2] [--rounds 6]
    pytest benchmarks/bench_rnn.py --benchmark-only        (the speed shapes, all threads)

speed: forward + backward of one layer over the whole sequence, for batch 64, T 28, input 28,
hidden 128 and batch 32, T 100, input 64, hidden 256, SimpleRNN / LSTM / GRU against
torch.nn.RNN / LSTM / GRU. Both compute every step's output (return_sequences, batch_first) and
backpropagate a given gradient of all outputs into the weights; neither computes the input
gradient (the layer is the model's first, as in training). kilnet and torch are timed in
alternating rounds (in an order that rotates every round, each callable's turn starting once the
other library's idle workers stopped spinning: kilnet.fair_timing), so a change in the machine's
load hits both; the reported time is the median
of all rounds. Arithmetic per call, G gates: forward 2·B·T·(I+H)·G·H, backward twice that
(dW, dU, and dh through U^T) — 6·B·T·(I+H)·G·H minus the input projection's dx: 2·B·T·I·G·H.

mask: what masking costs: the same fwd+bwd unmasked, with an all-ones mask and with right padding
(a quarter of the steps masked on average: lengths uniform in [T/2, T]), interleaved in rounds;
torch's packed sequence (pack_padded_sequence, the same lengths) alongside as the yardstick.

accuracy: row-by-row Fashion-MNIST (28 steps of 28 pixels), SimpleRNN(128)+Dense(10) and
LSTM(128)+Dense(10), Adam(lr 1e-3), the same batch size, epochs and initial weights (kilnet's
Keras initializers, copied into torch), test accuracy after every epoch.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from kilnet import fair_timing
from machine_info import machine, peak_line, peaks   # benchmarks/ is on sys.path when this file runs

SHAPES = [(64, 28, 28, 128), (32, 100, 64, 256)]          # B, T, I, H
CELLS = {"SimpleRNN": ("simple_rnn", "RNN", 1), "LSTM": ("lstm", "LSTM", 4), "GRU": ("gru", "GRU", 3)}


def flops(G, B, T, I, H):
    return 2 * B * T * G * H * (2 * I + 3 * H)      # fwd (I+H) + bwd dW (I) + dU (H) + dh (H)


# ---------------------------------------------------------------------------------- torch mapping
def torch_copy_weights(layer, mod):
    """Put a kilnet SimpleRNN/LSTM/GRU layer's weights into the matching torch module."""
    import torch
    H = layer.units
    W, U = layer.kernel.T, layer.recurrent_kernel.T                 # (G*H, I), (G*H, H)
    b = layer.bias if layer.use_bias else None
    if type(layer).__name__ == "GRU":                              # Keras z r h -> torch r z n
        perm = np.r_[H:2 * H, 0:H, 2 * H:3 * H]
        W, U = W[perm], U[perm]
        b_ih, b_hh = b[0][perm], b[1][perm]
    else:                                                           # RNN; LSTM i f c o == i f g o
        b_ih, b_hh = b, np.zeros_like(b)
    with torch.no_grad():
        for name, v in (("weight_ih_l0", W), ("weight_hh_l0", U), ("bias_ih_l0", b_ih), ("bias_hh_l0", b_hh)):
            getattr(mod, name).copy_(torch.from_numpy(np.ascontiguousarray(v)))


# ---------------------------------------------------------------------------------- speed
CLOCK = time.perf_counter    # --clock cpu: time.process_time (1 thread only: immune to other processes)


def time_rounds(fns, rounds, iters):
    """Alternate the callables in `rounds` rounds of `iters` calls; per-call times per callable."""
    out = [[] for _ in fns]
    for r in range(rounds):
        for j in fair_timing.rotate(range(len(fns)), r):   # the order changes every round (issue 23)
            f, times = fns[j], out[j]
            fair_timing.wait_idle()   # the other library's idle workers stopped spinning
            for _ in range(iters):
                t0 = CLOCK()
                f()
                times.append(CLOCK() - t0)
    return out


def speed_case(name, shape, threads, rounds, with_torch=True):
    """Median ms of kilnet fwd+bwd, kilnet fwd alone and torch fwd+bwd for one layer and shape."""
    import kilnet
    from kilnet import layers
    B, T, I, H = shape
    cell, torch_name, G = CELLS[name]
    kilnet.set_num_threads(threads)
    rng = np.random.default_rng(0)
    layer = getattr(layers, name)(H, return_sequences=True)
    layer._build((None, T, I))
    x = rng.uniform(-1, 1, (B, T, I)).astype(np.float32)
    dy = rng.uniform(-1, 1, (B, T, H)).astype(np.float32)

    def k_step():
        layer.forward(x, True)
        layer.backward(dy, need_dx=False)

    fns = [k_step, lambda: layer.forward(x, True)]
    if with_torch:
        import torch
        torch.set_num_threads(threads)
        mod = getattr(torch.nn, torch_name)(I, H, batch_first=True)
        torch_copy_weights(layer, mod)
        xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)

        def t_step():
            mod.zero_grad(set_to_none=True)
            out, _ = mod(xt)
            out.backward(dyt)
        fns.append(t_step)
    for f in fns:       # warm up: buffers, thread pools
        for _ in range(3):
            f()
    iters = max(2, int(0.15 / max(1e-4, _once(k_step))))
    times = [statistics.median(t) * 1e3 for t in time_rounds(fns, rounds, iters)]
    row = {"layer": name, "shape": shape, "threads": threads, "kilnet_ms": times[0], "fwd_ms": times[1],
           "gflops": flops(G, *shape) / times[0] * 1e-6}
    if with_torch:
        row["torch_ms"] = times[2]
    return row


def _once(f):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def run_speed(args):
    """The table `runs` times; each cell is the median over the runs (every run's value listed)."""
    import kilnet
    global CLOCK
    if args.clock == "cpu":
        if args.threads != [1]:
            raise SystemExit("--clock cpu sums the CPU time of all threads: use it with --threads 1")
        CLOCK = time.process_time
    print(f"machine: {machine()}; clock: {args.clock}")
    print(f"kilnet {kilnet.__version__} ({kilnet.simd_level()}); torch: "
          f"{'no' if args.no_torch else __import__('torch').__version__}")
    peak = peaks(args.threads)
    print(peak_line(peak) + "; %peak = GFLOP/s / that")
    print("fwd+bwd of the whole sequence (all outputs, weight gradients, no input gradient); "
          f"medians of {args.runs} run(s) of {args.rounds} alternating rounds\n")
    cases = [(t, name, shape) for t in args.threads for name in args.layers for shape in SHAPES]
    runs = {c: [] for c in cases}
    for _ in range(args.runs):
        for c in cases:
            runs[c].append(speed_case(c[1], c[2], c[0], args.rounds, not args.no_torch))
    hdr = f"{'layer':<10}{'B,T,I,H':<16}{'thr':>4}{'fwd ms':>8}{'fwd+bwd ms':>12}{'GFLOP/s':>9}{'%peak':>7}"
    print(hdr + ("" if args.no_torch else f"{'torch ms':>10}{'torch/kilnet':>14}   runs: kilnet | torch ms"))
    rows = []
    for (t, name, shape), rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0] if k.endswith("_ms") or k == "gflops"}
        row = {"layer": name, "shape": shape, "threads": t, **med}
        line = (f"{name:<10}{','.join(map(str, shape)):<16}{t:>4}{med['fwd_ms']:>8.2f}{med['kilnet_ms']:>12.2f}"
                f"{med['gflops']:>9.1f}{100 * med['gflops'] / peak[t]:>6.0f}%")
        if "torch_ms" in med:
            row["speedup"] = med["torch_ms"] / med["kilnet_ms"]
            each = lambda key: ", ".join(f"{r[key]:.2f}" for r in rs)
            line += f"{med['torch_ms']:>10.2f}{row['speedup']:>13.2f}x   {each('kilnet_ms')} | {each('torch_ms')}"
        rows.append(row)
        print(line, flush=True)
    return rows


# ---------------------------------------------------------------------------------- mask cost
def mask_case(name, shape, threads, rounds):
    """Median ms of fwd+bwd: unmasked, all-ones mask, right-padded mask, torch packed."""
    import kilnet
    import torch
    from kilnet import layers
    B, T, I, H = shape
    _, torch_name, _ = CELLS[name]
    kilnet.set_num_threads(threads)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    layer = getattr(layers, name)(H, return_sequences=True)
    layer._build((None, T, I))
    x = rng.uniform(-1, 1, (B, T, I)).astype(np.float32)
    dy = rng.uniform(-1, 1, (B, T, H)).astype(np.float32)
    lengths = rng.integers(T // 2, T + 1, size=B)
    padded = np.arange(T)[None] < lengths[:, None]
    ones = np.ones((B, T), bool)

    def step(mask):
        def f():
            layer.forward(x, True, mask=mask)
            layer.backward(dy, need_dx=False)
        return f
    mod = getattr(torch.nn, torch_name)(I, H, batch_first=True)
    torch_copy_weights(layer, mod)
    xt, dyt, lt = torch.from_numpy(x), torch.from_numpy(dy), torch.from_numpy(lengths)

    def t_packed():
        mod.zero_grad(set_to_none=True)
        packed = torch.nn.utils.rnn.pack_padded_sequence(xt, lt, batch_first=True, enforce_sorted=False)
        out, _ = mod(packed)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
        out.backward(dyt)
    fns = [step(None), step(ones), step(padded), t_packed]
    for f in fns:
        for _ in range(3):
            f()
    iters = max(2, int(0.15 / max(1e-4, _once(fns[0]))))
    return [statistics.median(t) * 1e3 for t in time_rounds(fns, rounds, iters)]


def run_mask(args):
    import kilnet
    global CLOCK
    if args.clock == "cpu":
        if args.threads != [1]:
            raise SystemExit("--clock cpu sums the CPU time of all threads: use it with --threads 1")
        CLOCK = time.process_time
    print(f"machine: {machine()}; clock: {args.clock}")
    print(f"kilnet {kilnet.__version__} ({kilnet.simd_level()}); torch {__import__('torch').__version__}; fwd+bwd "
          f"(all outputs, weight gradients, no input gradient), medians of {args.rounds} alternating rounds\n")
    print(f"{'layer':<10}{'B,T,I,H':<16}{'thr':>4}{'no mask':>10}{'ones':>10}{'padded':>10}{'torch packed':>14}"
          f"{'ones/none':>11}")
    rows = []
    for t in args.threads:
        for name in args.layers:
            for shape in SHAPES:
                none, ones, padded, tp = mask_case(name, shape, t, args.rounds)
                rows.append({"layer": name, "shape": shape, "threads": t, "none_ms": none, "ones_ms": ones,
                             "padded_ms": padded, "torch_packed_ms": tp})
                print(f"{name:<10}{','.join(map(str, shape)):<16}{t:>4}{none:>10.2f}{ones:>10.2f}{padded:>10.2f}"
                      f"{tp:>14.2f}{ones / none:>10.2f}x", flush=True)
    return rows


# ---------------------------------------------------------------------------------- accuracy
def load(limit=0):
    from kilnet.datasets import fashion_mnist
    (xt, yt), (xe, ye) = fashion_mnist.load_data()
    xt, xe = (xt / 255.0).astype(np.float32), (xe / 255.0).astype(np.float32)
    if limit:
        xt, yt = xt[:limit], yt[:limit]
    return xt, yt.astype(np.int64), xe, ye.astype(np.int64)


def kilnet_model(name, units, seed):
    from kilnet import layers
    from kilnet.models import Sequential
    from kilnet.utils import set_random_seed
    set_random_seed(seed)
    m = Sequential([getattr(layers, name)(units, input_shape=(28, 28)), layers.Dense(10, activation="softmax")])
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


def torch_model_like(kmodel, name):
    import torch
    rec, dense = kmodel.layers
    torch_name = CELLS[name][1]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = getattr(torch.nn, torch_name)(28, rec.units, batch_first=True)
            self.fc = torch.nn.Linear(rec.units, 10)

        def forward(self, x):
            out, _ = self.rnn(x)
            return self.fc(out[:, -1])

    net = Net()
    torch_copy_weights(rec, net.rnn)
    with torch.no_grad():
        net.fc.weight.copy_(torch.from_numpy(dense.kernel.T.copy()))
        net.fc.bias.copy_(torch.from_numpy(dense.bias.copy()))
    return net


def accuracy_run(name, data, args):
    import kilnet
    import torch
    xt, yt, xe, ye = data
    kilnet.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    km = kilnet_model(name, args.units, args.seed)
    net = torch_model_like(km, name)        # same initial weights
    res = {"kilnet": [], "torch": [], "kilnet_s": [], "torch_s": []}
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        km.fit(xt, yt, batch_size=args.batch_size, epochs=1, verbose=0)
        res["kilnet_s"].append(time.perf_counter() - t0)
        res["kilnet"].append(km.evaluate(xe, ye, batch_size=500, verbose=0)[1])
        print(f"  {name} epoch {epoch + 1}: kilnet test acc {res['kilnet'][-1]:.4f} ({res['kilnet_s'][-1]:.0f} s)",
              flush=True)
    torch.manual_seed(args.seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7)   # Keras's Adam
    lossf = torch.nn.CrossEntropyLoss()
    X, Y, XE = torch.from_numpy(xt), torch.from_numpy(yt), torch.from_numpy(xe)
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(X))
        for i in range(0, len(X), args.batch_size):
            idx = perm[i:i + args.batch_size]
            opt.zero_grad(set_to_none=True)
            lossf(net(X[idx]), Y[idx]).backward()
            opt.step()
        res["torch_s"].append(time.perf_counter() - t0)
        with torch.no_grad():
            pred = torch.cat([net(XE[i:i + 500]) for i in range(0, len(XE), 500)]).argmax(1).numpy()
        res["torch"].append(float((pred == ye).mean()))
        print(f"  {name} epoch {epoch + 1}: torch  test acc {res['torch'][-1]:.4f} ({res['torch_s'][-1]:.0f} s)",
              flush=True)
    return res


def run_accuracy(args):
    import kilnet
    print(f"machine: {machine()}")
    data = load(args.limit)
    print(f"kilnet {kilnet.__version__} ({kilnet.simd_level()}); row-by-row Fashion-MNIST, {len(data[0])} "
          f"training images, batch {args.batch_size}, Adam(1e-3), {args.epochs} epochs, {args.threads} thread(s)")
    out = {}
    for name in args.layers:
        r = accuracy_run(name, data, args)
        out[name] = r
        d = 100 * (r["kilnet"][-1] - r["torch"][-1])
        print(f"{name}({args.units})+Dense(10): kilnet {r['kilnet'][-1]:.4f}, torch {r['torch'][-1]:.4f} "
              f"(kilnet - torch = {d:+.2f} points); s/epoch kilnet {statistics.median(r['kilnet_s']):.0f}, "
              f"torch {statistics.median(r['torch_s']):.0f}", flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    sp = sub.add_parser("speed")
    sp.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    sp.add_argument("--rounds", type=int, default=6)
    sp.add_argument("--runs", type=int, default=1, help="repeat the whole table; report medians")
    sp.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: process CPU time, which other processes on a shared machine do not inflate")
    sp.add_argument("--no-torch", action="store_true")
    sp.add_argument("--layers", nargs="+", default=list(CELLS), choices=list(CELLS))
    mk = sub.add_parser("mask")
    mk.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    mk.add_argument("--rounds", type=int, default=6)
    mk.add_argument("--layers", nargs="+", default=list(CELLS), choices=list(CELLS))
    mk.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    ac = sub.add_parser("accuracy")
    ac.add_argument("--layers", nargs="+", default=["SimpleRNN", "LSTM"], choices=list(CELLS))
    ac.add_argument("--units", type=int, default=128)
    ac.add_argument("--epochs", type=int, default=5)
    ac.add_argument("--batch-size", type=int, default=64)
    ac.add_argument("--threads", type=int, default=1)
    ac.add_argument("--limit", type=int, default=0)
    ac.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    return {"speed": run_speed, "mask": run_mask, "accuracy": run_accuracy}[args.what](args)


# pytest-benchmark entry point: the speed table at all cores (results in extra_info)
def test_speed(benchmark):
    import pytest
    pytest.importorskip("torch")
    rows = [speed_case(n, s, os.cpu_count() or 1, 2) for n in CELLS for s in SHAPES]
    benchmark.extra_info["rows"] = rows
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


if __name__ == "__main__":
    main()
