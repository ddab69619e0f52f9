"""Utility under privacy: the canonical CNN (Conv2D(32,3x3,relu) → Flatten → Dense(10,softmax))
trained with DP-SGD on Fashion-MNIST to a target epsilon (delta 1e-5), the test accuracy and
epsilon after every epoch (the accuracy–epsilon curve).

    python benchmarks/dp_accuracy.py [--target-eps 3] [--epochs 10] [--batch 256] [--clip 1.0]
                                     [--optimizer adam] [--lr 1e-3] [--threads 1]

The noise multiplier is the smallest that keeps epsilon <= target after all the epochs
(kilnet.privacy.get_noise_multiplier, RDP accountant, the improved conversion Opacus uses);
batches are Poisson samples with expected size --batch.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from machine_info import machine   # benchmarks/ is on sys.path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target-eps", type=float, default=3.0)
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N training images (a quick run)")
    args = ap.parse_args(argv)
    import kilnet
    from kilnet.cli import canonical_model
    from kilnet.datasets import fashion_mnist
    from kilnet.privacy import get_noise_multiplier, make_private
    kilnet.set_num_threads(args.threads)
    kilnet.utils.set_random_seed(args.seed)
    (xt, yt), (xe, ye) = fashion_mnist.load_data()
    xt = (xt / 255.0).reshape(-1, 28, 28, 1).astype(np.float32)
    xe = (xe / 255.0).reshape(-1, 28, 28, 1).astype(np.float32)
    if args.limit:
        xt, yt = xt[:args.limit], yt[:args.limit]
    n = len(xt)
    q = args.batch / n
    steps = args.epochs * int(1 / q)           # what fit takes under Poisson sampling
    sigma = get_noise_multiplier(args.target_eps, args.delta, q, steps=steps)
    lr = args.lr or (1e-3 if args.optimizer == "adam" else 0.5)
    inner = kilnet.optimizers.Adam(lr) if args.optimizer == "adam" else kilnet.optimizers.SGD(lr, momentum=0.9)
    opt = make_private(inner, args.clip, sigma, delta=args.delta, seed=args.seed)
    model = canonical_model()
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    print(f"machine: {machine()}")
    print(f"DP-{args.optimizer} lr {lr}, clip {args.clip}, noise multiplier {sigma:.3f}, expected batch "
          f"{args.batch} (q {q:.5f}), {args.epochs} epochs = {steps} steps, delta {args.delta}, target eps "
          f"{args.target_eps}")
    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        h = model.fit(xt, yt, batch_size=args.batch, epochs=1, verbose=0)
        acc = model.evaluate(xe, ye, batch_size=1000, verbose=0)[1]
        print(f"epoch {epoch + 1:2d}: epsilon {h.history['epsilon'][-1]:.2f}  test accuracy {acc:.4f}  "
              f"train loss {h.history['loss'][-1]:.4f}  clipped {opt.last_clip_fraction:.2f}  "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
