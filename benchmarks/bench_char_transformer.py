"""The character Transformer (kilnet.apps.char_transformer) against the same model in plain
PyTorch: tokens per second and the validation loss curve, same data windows, same initial
weights (PyTorch starts from kilnet's), same optimizer (Adam, lr 1e-3, eps 1e-7 as Keras).

    python benchmarks/bench_char_transformer.py [--steps 200] [--threads 1 2] [--blocks 4] [--rounds 1]

Each library runs in its own process (no thread pool stays warm in the other's way), one per
round, in an order that rotates every round (kilnet.fair_timing.rotate); a throughput whose
rounds spread by more than fair_timing.STALL_SPREAD (max/min) is marked "!" (a stall, issue 23).
The throughput counts training steps only (evaluation excluded), after 5 warm-up steps; reported:
the median over rounds, and the first round's loss curves.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from kilnet import fair_timing
from machine_info import machine   # benchmarks/ is on sys.path


def run_kilnet(a, weights_out):
    import kilnet
    from kilnet.apps import char_transformer as ct
    kilnet.set_num_threads(a.threads)
    kilnet.utils.set_random_seed(0)
    ids = ct.encode(ct.stdlib_text(a.max_bytes))
    tr, va = ct.split(ids)
    model = ct.build_model(a.context, a.width, a.heads, a.blocks)
    np.savez(weights_out, *[np.asarray(w) for w in model.get_weights()])
    rng = np.random.default_rng(0)
    xw, yw = ct.windows(tr, a.context, 5 * a.batch, np.random.default_rng(99))
    # warm-up on other windows, then restore the initial weights: both libraries start equal
    init = model.get_weights()
    model.fit(xw, yw, batch_size=a.batch, epochs=1, shuffle=False, verbose=0)
    model.set_weights(init)
    model.compile(optimizer=kilnet.optimizers.Adam(1e-3),
                  loss=kilnet.losses.SparseCategoricalCrossentropy(from_logits=True))
    curve, train_s = [], 0.0
    for done in range(0, a.steps, a.eval_every):   # (the last chunk shorter: exactly a.steps steps)
        x, y = ct.windows(tr, a.context, min(a.eval_every, a.steps - done) * a.batch, rng)
        t0 = time.perf_counter()
        model.fit(x, y, batch_size=a.batch, epochs=1, shuffle=False, verbose=0)
        train_s += time.perf_counter() - t0
        curve.append(ct.bits_per_char(model, va, a.context, batch_size=a.batch))
    return {"tokens_per_s": a.steps * a.batch * a.context / train_s, "curve_bpc": curve}


def run_torch(a, weights_in):
    import torch
    import torch.nn.functional as F
    from kilnet.apps import char_transformer as ct
    torch.set_num_threads(a.threads)
    ids = ct.encode(ct.stdlib_text(a.max_bytes))
    tr, va = ct.split(ids)
    w = np.load(weights_in)
    w = [torch.tensor(w[f"arr_{i}"]) for i in range(len(w.files))]
    it = iter(w)
    P = lambda: torch.nn.Parameter(next(it).clone())  # noqa: E731  (Keras weight order)
    tok, pos = P(), P()
    blocks = []
    h, kd = a.heads, a.width // a.heads
    for _ in range(a.blocks):
        blk = {"g1": P(), "b1": P()}
        for n in ("q", "k", "v"):
            blk[n + "w"], blk[n + "b"] = P(), P()
        blk["ow"], blk["ob"] = P(), P()
        blk["g2"], blk["b2"] = P(), P()
        blk["w1"], blk["c1"], blk["w2"], blk["c2"] = P(), P(), P(), P()
        blocks.append(blk)
    gf, bf, wl, bl = P(), P(), P(), P()
    params = [tok, pos, gf, bf, wl, bl] + [p for blk in blocks for p in blk.values()]

    def forward(x):
        b, t = x.shape
        z = tok[x] + pos[torch.arange(t)]
        for blk in blocks:
            u = F.layer_norm(z, (a.width,), blk["g1"], blk["b1"], 1e-5)
            q = (u @ blk["qw"].reshape(a.width, -1) + blk["qb"].reshape(-1)).reshape(b, t, h, kd).transpose(1, 2)
            k = (u @ blk["kw"].reshape(a.width, -1) + blk["kb"].reshape(-1)).reshape(b, t, h, kd).transpose(1, 2)
            v = (u @ blk["vw"].reshape(a.width, -1) + blk["vb"].reshape(-1)).reshape(b, t, h, kd).transpose(1, 2)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, h * kd)
            z = z + o @ blk["ow"].reshape(h * kd, -1) + blk["ob"]
            u = F.layer_norm(z, (a.width,), blk["g2"], blk["b2"], 1e-5)
            z = z + F.gelu(u @ blk["w1"] + blk["c1"]) @ blk["w2"] + blk["c2"]
        return F.layer_norm(z, (a.width,), gf, bf, 1e-5) @ wl + bl

    opt = torch.optim.Adam(params, lr=1e-3, eps=1e-7)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(forward(torch.from_numpy(x).long()).reshape(-1, ct.VOCAB),
                               torch.from_numpy(y).long().reshape(-1))
        loss.backward()
        opt.step()

    init = [p.detach().clone() for p in params]
    xw, yw = ct.windows(tr, a.context, 5 * a.batch, np.random.default_rng(99))
    for i in range(5):
        step(xw[i * a.batch:(i + 1) * a.batch], yw[i * a.batch:(i + 1) * a.batch])
    with torch.no_grad():
        for p, p0 in zip(params, init):
            p.copy_(p0)
    opt = torch.optim.Adam(params, lr=1e-3, eps=1e-7)
    rng = np.random.default_rng(0)
    xv, yv = ct.windows(va, a.context, 256, np.random.default_rng(1))
    curve, train_s = [], 0.0
    for done in range(0, a.steps, a.eval_every):   # (the last chunk shorter: exactly a.steps steps)
        x, y = ct.windows(tr, a.context, min(a.eval_every, a.steps - done) * a.batch, rng)
        t0 = time.perf_counter()
        for i in range(min(a.eval_every, a.steps - done)):
            step(x[i * a.batch:(i + 1) * a.batch], y[i * a.batch:(i + 1) * a.batch])
        train_s += time.perf_counter() - t0
        with torch.no_grad():
            tot = 0.0
            for i in range(0, len(xv), a.batch):
                lo = forward(torch.from_numpy(xv[i:i + a.batch]).long())
                tot += float(F.cross_entropy(lo.reshape(-1, ct.VOCAB), torch.from_numpy(yv[i:i + a.batch]).long()
                                             .reshape(-1))) * len(xv[i:i + a.batch])
        curve.append(tot / len(xv) / np.log(2.0))
    return {"tokens_per_s": a.steps * a.batch * a.context / train_s, "curve_bpc": curve}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--max-bytes", type=int, default=2_000_000)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=1, help="processes per library and thread count")
    p.add_argument("--one", choices=("kilnet", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        a.threads = a.threads[0]
        res = run_kilnet(a, a.weights) if a.one == "kilnet" else run_torch(a, a.weights)
        print("RESULT " + json.dumps(res))
        return
    print(f"machine: {machine()}")
    print(f"steps {a.steps}, batch {a.batch}, context {a.context}, width {a.width}, "
          f"heads {a.heads}, blocks {a.blocks}; tok/s: median of {a.rounds} rounds, the order rotating by round")
    opts = [f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items()
            if k in ("steps", "eval_every", "batch", "context", "width", "heads", "blocks", "max_bytes")]
    with tempfile.TemporaryDirectory() as d:
        wpath = os.path.join(d, "init.npz")
        for th in a.threads:
            runs = {"kilnet": [], "torch": []}
            for r in range(a.rounds):
                # round 0 runs kilnet first: it writes the initial weights (seed 0: the same every run)
                for lib in fair_timing.rotate(runs, r):
                    cmd = [sys.executable, __file__, "--one", lib, "--weights", wpath, "--threads", str(th)] + opts
                    out = subprocess.run(cmd, capture_output=True, text=True, env=fair_timing.worker_env(lib, th))
                    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
                    if not line:
                        sys.exit(f"{lib} failed:\n{out.stdout}\n{out.stderr}")
                    runs[lib].append(json.loads(line[0][7:]))
            tps = {lib: statistics.median(r["tokens_per_s"] for r in rs) for lib, rs in runs.items()}
            mark = {lib: "!" if len(rs) > 1 and fair_timing.stalled([r["tokens_per_s"] for r in rs]) else ""
                    for lib, rs in runs.items()}
            k, t = runs["kilnet"][0], runs["torch"][0]
            diff = max(abs(x - y) / y for x, y in zip(k["curve_bpc"], t["curve_bpc"]))
            print(f"threads {th}: kilnet {tps['kilnet']:.0f}{mark['kilnet']} tok/s, "
                  f"torch {tps['torch']:.0f}{mark['torch']} tok/s, ratio {tps['kilnet'] / tps['torch']:.2f}x")
            print(f"  validation bits/char every {a.eval_every} steps: kilnet "
                  f"{' '.join(f'{v:.3f}' for v in k['curve_bpc'])}; torch {' '.join(f'{v:.3f}' for v in t['curve_bpc'])}"
                  f"; max relative difference {100 * diff:.1f}%")
    print(f"! = the rounds' tok/s spread by more than {fair_timing.STALL_SPREAD}x (max/min): "
          "a stalled or disturbed round, not the library")


if __name__ == "__main__":
    main()
