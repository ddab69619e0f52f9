"""The `kilnet` command: train the canonical or the small CNN, print build and machine facts."""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

__all__ = ["main", "canonical_model", "small_cnn_model"]


def canonical_model():
    """The canonical CNN: Conv2D(32, 3x3, relu) → Flatten → Dense(10, softmax), Adam, sparse CE."""
    from kilnet.layers import Conv2D, Dense, Flatten
    from kilnet.models import Sequential
    model = Sequential([
        Conv2D(32, (3, 3), activation="relu", input_shape=(28, 28, 1)),
        Flatten(),
        Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def small_cnn_model(epochs=15, steps_per_epoch=938, learning_rate=1e-3):
    """The example small CNN (87,594 parameters; benchmarks/RESULTS.md, "Small CNN"):
    Conv2D(32) → BN → ReLU → MaxPool → Conv2D(64) → BN → ReLU → MaxPool → Dropout(0.25)
    → Conv2D(64) → BN → ReLU → Dropout(0.25) → Flatten → Dense(10, softmax); every convolution
    3x3, 'same', without bias (the batch norm's beta is the bias). Adam, with the learning rate
    cosine-decayed to 0 over epochs*steps_per_epoch steps."""
    from kilnet.layers import Activation, BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxPooling2D
    from kilnet.models import Sequential
    from kilnet.optimizers import Adam
    from kilnet.schedules import CosineDecay

    def conv_bn_relu(filters, **kwargs):
        return [Conv2D(filters, (3, 3), padding="same", use_bias=False, **kwargs), BatchNormalization(),
                Activation("relu")]

    model = Sequential([
        *conv_bn_relu(32, input_shape=(28, 28, 1)), MaxPooling2D(),
        *conv_bn_relu(64), MaxPooling2D(), Dropout(0.25),
        *conv_bn_relu(64), Dropout(0.25),
        Flatten(), Dense(10, activation="softmax"),
    ])
    schedule = CosineDecay(learning_rate, decay_steps=max(1, epochs * steps_per_epoch))
    model.compile(optimizer=Adam(learning_rate=schedule), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


# --model choices: (build function taking epochs and steps per epoch, default epochs, default batch size)
MODELS = {"canonical": (lambda epochs, steps: canonical_model(), 10, 32),
          "small-cnn": (lambda epochs, steps: small_cnn_model(epochs, steps), 15, 64)}


def cmd_train(args) -> int:
    import kilnet
    from kilnet.datasets import fashion_mnist
    from kilnet.utils import set_random_seed
    if args.threads:
        kilnet.set_num_threads(args.threads)
    if args.seed is not None:
        set_random_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data()
    x_train = (x_train / 255.0).reshape(-1, 28, 28, 1)
    x_test = (x_test / 255.0).reshape(-1, 28, 28, 1)
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    build, default_epochs, default_batch = MODELS[args.model]
    args.epochs = default_epochs if args.epochs is None else args.epochs
    args.batch_size = default_batch if args.batch_size is None else args.batch_size
    model = build(args.epochs, -(-len(x_train) // args.batch_size))
    print(f"kilnet {kilnet.__version__}: {args.model} model on Fashion-MNIST ({len(x_train)} training images), "
          f"{kilnet.get_num_threads()} threads, {kilnet.simd_level()} kernels", flush=True)
    t0 = time.perf_counter()
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=args.verbose)
    train_s = time.perf_counter() - t0
    loss, acc = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    print(f"trained {args.epochs} epochs in {train_s:.1f}s")
    print(f"test loss: {loss:.4f}")
    print(f"test accuracy: {acc:.4f}")
    if args.out:
        model.save(args.out)
        print(f"saved {args.out}")
    return 0


def cmd_info(args) -> int:
    import numpy as np

    import kilnet
    from kilnet import _cpu, backend
    print(f"kilnet {kilnet.__version__}")
    print(f"python {platform.python_version()} ({sys.executable}), numpy {np.__version__}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"build: {_cpu.build_info()}")
    print(f"simd level in use: {_cpu.simd_level()}")
    print(f"threads: {_cpu.get_num_threads()}")
    if backend.cuda_compiled():
        from kilnet import _cuda  # type: ignore[attr-defined]
        archs = _cuda.compiled_architectures()
        n = _cuda.device_count()
        print(f"cuda: compiled (architectures {archs})")
        if n:
            names = ", ".join(_cuda.device_name(i) for i in range(n))
            print(f"gpu: {n} usable ({names})")
        else:
            print("gpu: none usable (no NVIDIA driver or device)")
    else:
        print("cuda: not compiled (no CUDA compiler at build time)")
        print("gpu: not usable")
    return 0


def draw_attribution(image, attribution, title, out):
    """Save the input beside its attribution heat map (matplotlib, an optional extra)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("kilnet explain needs matplotlib: pip install matplotlib") from None
    import numpy as np
    img = image.reshape(image.shape[0], image.shape[1], -1)
    att = attribution.reshape(img.shape).sum(axis=-1)
    lim = float(np.abs(att).max()) or 1.0
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.4))
    axes[0].imshow(img.squeeze(), cmap="gray")
    axes[0].set_title("input")
    im = axes[1].imshow(att, cmap="RdBu_r", vmin=-lim, vmax=lim)
    axes[1].set_title("attribution")
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def cmd_explain(args) -> int:
    import numpy as np

    from kilnet import explain
    from kilnet.datasets import fashion_mnist
    from kilnet.datasets.fashion_mnist import CLASS_NAMES
    from kilnet.models import load_model
    model = load_model(args.model, compile=False)
    (_, _), (x_test, y_test) = fashion_mnist.load_data()
    if not 0 <= args.index < len(x_test):
        raise ValueError(f"--index must be in [0, {len(x_test)}), got {args.index}")
    x = (x_test[args.index:args.index + 1] / 255.0).reshape((1,) + tuple(model.input_shape[1:]))
    probs = model.predict(x, verbose=0)[0]
    pred = int(probs.argmax())
    target = pred if args.target is None else args.target
    if args.method == "saliency":
        att = explain.saliency(model, x, target=target)
    elif args.method == "smoothgrad":
        att = explain.smoothgrad(model, x, target=target, seed=0)
    else:
        att = explain.integrated_gradients(model, x, target=target, steps=args.steps)
    name = lambda c: CLASS_NAMES[c] if len(probs) == len(CLASS_NAMES) else str(c)
    title = (f"test #{args.index}: true {name(int(y_test[args.index]))}, predicted {name(pred)} "
             f"({probs[pred]:.2f}); {args.method} for {name(target)}")
    draw_attribution(x[0], att[0], title, args.out)
    print(title)
    print(f"wrote {args.out}")
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="kilnet", description="kilnet: Keras-style deep learning on hand-written kernels")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a CNN on Fashion-MNIST and print test accuracy",
                       description="Train a CNN on Fashion-MNIST, then print the test loss and accuracy. "
                                   "canonical: Conv2D(32,3x3,relu) → Flatten → Dense(10,softmax), Adam. "
                                   "small-cnn: three conv/batch-norm blocks with pooling and dropout "
                                   "(87,594 parameters), Adam with a cosine-decayed learning rate.")
    t.add_argument("--model", choices=sorted(MODELS), default="canonical", help="which model (default canonical)")
    t.add_argument("--epochs", type=int, default=None,
                   help="number of epochs (default 10 for canonical, 15 for small-cnn)")
    t.add_argument("--batch-size", type=int, default=None,
                   help="batch size (default 32 for canonical, 64 for small-cnn)")
    t.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    t.add_argument("--out", default="model.h5", help="where to save the trained model (default model.h5; '' to skip)")
    t.add_argument("--seed", type=int, default=None, help="random seed for a repeatable run")
    t.add_argument("--limit", type=int, default=0, help="train on the first N images only (quick checks)")
    t.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2), help="fit verbosity (default 1)")
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("explain", help="draw a Fashion-MNIST test image beside its attribution heat map",
                       description="Explain one Fashion-MNIST test prediction of a saved model: the input "
                                   "beside its attribution (integrated gradients by default).")
    e.add_argument("model", help="a model saved with model.save (.h5)")
    e.add_argument("--index", type=int, default=0, help="test image index (default 0)")
    e.add_argument("--out", default="explain.png", help="output PNG (default explain.png)")
    e.add_argument("--method", choices=("ig", "saliency", "smoothgrad"), default="ig",
                   help="attribution method (default ig: integrated gradients)")
    e.add_argument("--steps", type=int, default=50, help="integration steps for ig (default 50)")
    e.add_argument("--target", type=int, default=None, help="class to explain (default: the predicted one)")
    e.set_defaults(func=cmd_explain)
    i = sub.add_parser("info", help="print version, build flags, SIMD level, threads and CUDA status")
    i.set_defaults(func=cmd_info)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"kilnet: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
