"""Mixed precision training step on the CPU: an MLP under kilnet's float32 and mixed_bfloat16
policies against PyTorch in float32 and under torch.autocast("cpu", torch.bfloat16), in one
process, at 1 and 2 threads.

    python benchmarks/bench_mixed_precision.py [--threads 1 2] [--batch 256]
        [--units 784 2048 2048 10] [--steps 10] [--rounds 3] [--no-torch] [--cnn] [--transformer]

The model: Dense(relu) layers of the given widths, a float32 softmax output (the pattern Keras
recommends), sparse categorical cross-entropy, SGD. A step is forward, backward and the update
(kilnet: model.train_on_batch on one prepared batch; torch: zero_grad, forward, loss, backward,
step). Columns: median ms per step of the best round, and the ratios. The libraries alternate
round by round, in an order that rotates every round, each turn starting once the other pools'
idle workers stopped spinning (kilnet.fair_timing); "!" marks a time whose round medians spread
by more than fair_timing.STALL_SPREAD (a stall or a busy machine, issue 23). kilnet's bfloat16
GEMMs run on AMX tiles where `kilnet._cpu.bf16_level()` says 'amx', on VDPBF16PS where it says
'avx512bf16', else as float32 GEMMs on rounded operands (no speed-up expected there).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from kilnet import fair_timing
from machine_info import machine, peak_line, peaks   # benchmarks/ is on sys.path


def median_step(step, steps):
    step()   # warm: buffers, packing, autocast caches
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def best_rounds(steps, rounds, n):
    """{name: (the best round's median seconds per step, "!" or "")}: the steps take turns for
    `rounds` rounds of n timed steps, in an order that rotates every round, each turn starting
    once the other pools are idle; "!" when a step's round medians spread too far."""
    times = {name: [] for name in steps}
    for r in range(rounds):
        for name in fair_timing.rotate(steps, r):
            fair_timing.wait_idle()
            times[name].append(median_step(steps[name], n))
    return {name: (min(t), "!" if fair_timing.stalled(t) else "") for name, t in times.items()}


def kilnet_step(policy, units, x, y):
    import kilnet
    from kilnet import layers
    kilnet.mixed_precision.set_global_policy(policy)
    try:
        kilnet.utils.set_random_seed(0)
        hidden = [layers.Dense(u, activation="relu") for u in units[1:-1]]
        model = kilnet.Sequential([kilnet.Input((units[0],)), *hidden,
                                   layers.Dense(units[-1], activation="softmax", dtype="float32")])
    finally:
        kilnet.mixed_precision.set_global_policy("float32")
    model.compile(kilnet.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    return lambda: model.train_on_batch(x, y)


def torch_step(autocast, units, x, y):
    import torch
    torch.manual_seed(0)
    mods = []
    for a, b in zip(units[:-2], units[1:-1]):
        mods += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = torch.nn.Sequential(*mods, torch.nn.Linear(units[-2], units[-1]))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))

    def step():
        opt.zero_grad(set_to_none=True)
        if autocast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(xt)
            loss = loss_fn(logits.float(), yt)    # the loss in float32, as Keras and kilnet
        else:
            loss = loss_fn(model(xt), yt)
        loss.backward()
        opt.step()
    return step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--units", type=int, nargs="+", default=[784, 2048, 2048, 10])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per library per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--cnn", action="store_true", help="also time the canonical CNN under both policies")
    ap.add_argument("--cnn-batch", type=int, default=32)
    ap.add_argument("--transformer", action="store_true",
                    help="also the character Transformer (kilnet.apps.char_transformer): step time under "
                         "both policies, and the validation loss after --transformer-steps steps from the "
                         "same initial weights")
    ap.add_argument("--transformer-steps", type=int, default=60)
    args = ap.parse_args(argv)
    if len(args.units) < 3:
        ap.error("--units needs an input width, at least one hidden width and the number of classes")
    import kilnet
    from kilnet.backend import cpu
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            torch = None
    print(machine())
    print(peak_line(peaks(args.threads)))
    print(f"kilnet bf16 path: {cpu.bf16_level()}; torch {torch.__version__ if torch else 'absent'}; "
          f"MLP {'-'.join(map(str, args.units))}, batch {args.batch}")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, args.units[0])).astype(np.float32)
    y = rng.integers(0, args.units[-1], args.batch)
    flops = 6.0 * args.batch * sum(a * b for a, b in zip(args.units[:-1], args.units[1:]))
    cols = ["kilnet f32", "kilnet bf16"] + (["torch f32", "torch autocast"] if torch else [])
    print("| thr | " + " | ".join(f"{c} ms" for c in cols) + " | bf16/f32 kilnet | kilnet bf16 vs torch autocast "
          "| kilnet bf16 GFLOP/s |")
    print("|---" * (len(cols) + 4) + "|")
    for t in args.threads:
        kilnet.set_num_threads(t)
        if torch is not None:
            torch.set_num_threads(t)
        steps = {"kilnet f32": kilnet_step("float32", args.units, x, y),
                 "kilnet bf16": kilnet_step("mixed_bfloat16", args.units, x, y)}
        if torch is not None:
            steps["torch f32"] = torch_step(False, args.units, x, y)
            steps["torch autocast"] = torch_step(True, args.units, x, y)
        res = best_rounds(steps, args.rounds, args.steps)
        best = {name: v[0] for name, v in res.items()}
        ta = best.get("torch autocast")
        vs = f"{ta / best['kilnet bf16']:.2f}x" if ta else "-"
        print(f"| {t} | " + " | ".join(f"{best[c] * 1e3:.1f}{res[c][1]}" for c in cols)
              + f" | {best['kilnet f32'] / best['kilnet bf16']:.2f}x | {vs} | "
              f"{flops / best['kilnet bf16'] / 1e9:.0f} |", flush=True)
    print("(ratios: time of the first over the second, >1 means kilnet bf16 is faster)")
    if args.cnn:
        # the canonical CNN (Conv2D 32 3x3 relu -> Flatten -> Dense 10 softmax, Adam): its Conv2D has
        # no bfloat16 kernel, so under mixed_bfloat16 it computes float32 on rounded values
        from kilnet._canonical import canonical_model
        xc = rng.standard_normal((args.cnn_batch, 28, 28, 1)).astype(np.float32)
        yc = rng.integers(0, 10, args.cnn_batch)
        print(f"canonical CNN, batch {args.cnn_batch}: ms per training step")
        print("| thr | float32 | mixed_bfloat16 | bf16/f32 |\n|---|---|---|---|")
        for t in args.threads:
            kilnet.set_num_threads(t)
            models = {}
            for policy in ("float32", "mixed_bfloat16"):
                kilnet.mixed_precision.set_global_policy(policy)
                try:
                    m = canonical_model()
                finally:
                    kilnet.mixed_precision.set_global_policy("float32")
                models[policy] = (lambda m=m: m.train_on_batch(xc, yc))
            res = best_rounds(models, args.rounds, args.steps)
            (f32, f32_mark), (bf16, bf16_mark) = res["float32"], res["mixed_bfloat16"]
            print(f"| {t} | {f32 * 1e3:.2f}{f32_mark} | {bf16 * 1e3:.2f}{bf16_mark} | {f32 / bf16:.2f}x |", flush=True)
    if args.transformer:
        transformer_rows(args, rng)
    print(f"(! = that time's round medians spread by more than {fair_timing.STALL_SPREAD}x (max/min): "
          "a stall or a busy machine, not the step)")


def transformer_models(policies):
    """The char Transformer (4 blocks, width 128, 4 heads, context 128) under each policy, all
    starting from the float32 model's weights."""
    import kilnet
    from kilnet.apps import char_transformer as ct
    models = {}
    for policy in policies:
        kilnet.mixed_precision.set_global_policy(policy)
        try:
            kilnet.utils.set_random_seed(0)
            models[policy] = ct.build_model()
        finally:
            kilnet.mixed_precision.set_global_policy("float32")
    first = models[policies[0]].get_weights()
    for m in models.values():
        m.set_weights(first)
    return models


def transformer_rows(args, rng):
    """Step time of the char Transformer under float32 and mixed_bfloat16 (batch 32), then the
    validation bits per character of both after the same training windows."""
    import kilnet
    from kilnet.apps import char_transformer as ct
    policies = ("float32", "mixed_bfloat16")
    x = rng.integers(0, ct.VOCAB, (32, 128)).astype(np.int32)
    y = rng.integers(0, ct.VOCAB, (32, 128))
    print("character Transformer (4 blocks, width 128, 4 heads, context 128), batch 32: ms per training step")
    print("| thr | float32 | mixed_bfloat16 | bf16/f32 |\n|---|---|---|---|")
    for t in args.threads:
        kilnet.set_num_threads(t)
        models = transformer_models(policies)
        res = best_rounds({p: (lambda m=m: m.train_on_batch(x, y)) for p, m in models.items()}, args.rounds,
                          args.steps)
        (f32, f32_mark), (bf16, bf16_mark) = res["float32"], res["mixed_bfloat16"]
        print(f"| {t} | {f32 * 1e3:.1f}{f32_mark} | {bf16 * 1e3:.1f}{bf16_mark} | {f32 / bf16:.2f}x |", flush=True)
    ids = ct.encode(ct.stdlib_text(1_000_000))
    tr, va = ct.split(ids)
    xs, ys = ct.windows(tr, 128, args.transformer_steps * 32, np.random.default_rng(7))
    models = transformer_models(policies)
    bpc = {}
    for p, m in models.items():
        m.fit(xs, ys, batch_size=32, epochs=1, shuffle=False, verbose=0)
        bpc[p] = ct.bits_per_char(m, va, 128)
    diff = abs(bpc["mixed_bfloat16"] - bpc["float32"]) / bpc["float32"]
    print(f"validation bits/char after {args.transformer_steps} steps (same data, same initial weights): "
          f"float32 {bpc['float32']:.4f}, mixed_bfloat16 {bpc['mixed_bfloat16']:.4f} ({100 * diff:.2f}% apart)")


if __name__ == "__main__":
    main()
