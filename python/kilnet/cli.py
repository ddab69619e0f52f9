"""The `kilnet` command: train the canonical or another registered model, benchmark the kernels, print build and machine facts."""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

# canonical_model lives in kilnet._canonical (kilnet.bench uses it too); re-exported here
from kilnet._canonical import canonical_model

__all__ = ["main", "canonical_model", "small_cnn_model"]


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


def cmd_train(args) -> int:
    import numpy as np

    import kilnet
    from kilnet.datasets import fashion_mnist
    from kilnet.utils import set_random_seed
    if args.threads:
        kilnet.set_num_threads(args.threads)
    rank, world = 0, 1
    if args.distributed:   # under mpirun: data parallel, batch size per rank; rank 0 prints and saves
        from kilnet import distributed
        rank, world = distributed.init()
        if rank != 0:
            args.verbose, args.out, args.plot = 0, "", ""
    say = print if rank == 0 else (lambda *a, **k: None)
    if args.seed is not None:
        set_random_seed(args.seed)
    if args.model == "char-transformer":
        return _train_char_transformer(args, say)
    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data()
    # float32 from the start: x / 255.0 on the uint8 images would make a float64 copy (376 MB)
    # that fit then converts again
    x_train = (x_train.astype(np.float32) / np.float32(255.0)).reshape(-1, 28, 28, 1)
    x_test = (x_test.astype(np.float32) / np.float32(255.0)).reshape(-1, 28, 28, 1)
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    # epochs and batch size: the flags, else the model's defaults (MODEL_DEFAULTS), else 10 and 32
    defaults = MODEL_DEFAULTS.get(args.model, {})
    args.epochs = args.epochs if args.epochs is not None else defaults.get("epochs", 10)
    args.batch_size = args.batch_size if args.batch_size is not None else defaults.get("batch_size", 32)
    try:
        device = kilnet.backend.normalize_device(args.device)
    except RuntimeError as e:   # no GPU: a one-line error, not a traceback
        raise ValueError(str(e)) from None
    with kilnet.device(device):
        model = canonical_model() if args.model == "canonical" else \
            _named_model(args.model, epochs=args.epochs,
                         steps_per_epoch=-(-len(x_train) // (args.batch_size * world)))
    where = (f"GPU ({kilnet.backend.cuda_module().device_name(0)})" if model.device == "cuda" else
             f"{kilnet.get_num_threads()} threads, {kilnet.simd_level()} kernels")
    say(f"kilnet {kilnet.__version__}: {args.model} CNN on Fashion-MNIST ({len(x_train)} training images), "
        f"{where}" + (f", {world} ranks x batch {args.batch_size} (distributed)" if args.distributed else ""),
        flush=True)
    t0 = time.perf_counter()
    history = model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
                        verbose=args.verbose, validation_split=args.validation_split,
                        **({"distributed": True} if args.distributed else {}))
    train_s = time.perf_counter() - t0
    if rank != 0:   # the weights are the same on every rank: rank 0 evaluates, prints and saves
        return 0
    loss, acc = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    print(f"trained {args.epochs} epochs in {train_s:.1f}s")
    print(f"test loss: {loss:.4f}")
    print(f"test accuracy: {acc:.4f}")
    if args.out:
        model.save(args.out)
        print(f"saved {args.out}")
    if args.plot:
        plot_history(history.history, args.plot, f"{args.model} CNN on Fashion-MNIST (test accuracy {acc:.4f})")
        print(f"wrote {args.plot}")
    return 0


def _train_char_transformer(args, say) -> int:
    """`kilnet train --model char-transformer`: the small decoder-only Transformer on the
    standard library's .py files; --epochs counts rounds of 100 steps, each followed by a
    validation figure in bits per character."""
    import kilnet
    from kilnet.apps import char_transformer as ct
    if args.distributed or args.device != "cpu":
        raise ValueError("--model char-transformer trains on one CPU process")
    rounds = args.epochs if args.epochs is not None else 3
    batch = args.batch_size if args.batch_size is not None else 32
    say(f"kilnet {kilnet.__version__}: char-transformer (4 blocks, width 128, 4 heads, context 128) on the "
        f"Python standard library's sources, {kilnet.get_num_threads()} threads, {kilnet.simd_level()} kernels",
        flush=True)
    t0 = time.perf_counter()
    model, curve = ct.train(steps=100 * rounds, batch_size=batch, eval_every=100,
                            seed=args.seed if args.seed is not None else 0, verbose=args.verbose, say=say)
    train_s = time.perf_counter() - t0
    tokens = 100 * rounds * batch * 128
    print(f"trained {100 * rounds} steps in {train_s:.1f}s ({tokens / train_s:.0f} tokens/s, evaluation included)")
    print(f"validation: {curve[-1][1]:.3f} bits per character")
    print("sample:\n" + ct.sample(model, "def ", length=200, temperature=0.7))
    if args.out:
        out = args.out if args.out.endswith(".weights.h5") else "char_transformer.weights.h5"
        model.save_weights(out)
        print(f"saved weights to {out}")
    return 0


def _named_model(name, **run):
    """Other models `kilnet train --model` knows (registered by the modules that define them).
    `run` (epochs, steps_per_epoch) goes to the builder's parameters of those names, if it has
    them (a learning-rate schedule needs the length of the run)."""
    import inspect
    builders = dict(MODEL_BUILDERS)
    if name not in builders:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(['canonical', *builders])}")
    accepted = inspect.signature(builders[name]).parameters
    return builders[name](**{k: v for k, v in run.items() if k in accepted})


MODEL_BUILDERS: dict = {"small-cnn": small_cnn_model}   # name -> function returning a compiled model with (28, 28, 1) input
MODEL_DEFAULTS: dict = {"small-cnn": {"epochs": 15, "batch_size": 64}}   # per-model epochs / batch size


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("plotting needs matplotlib: pip install matplotlib (or kilnet[plot])") from None
    return plt


def plot_history(history, out, title):
    """Loss and accuracy curves (training, and validation when present) to a PNG."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    metrics = [k for k in history if not k.startswith("val_") and k != "learning_rate"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    for ax, k in zip(axes[0], metrics):
        epochs = range(1, len(history[k]) + 1)
        ax.plot(epochs, history[k], "o-", label=f"train {k}")
        if "val_" + k in history:
            ax.plot(epochs, history["val_" + k], "s--", label=f"validation {k}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(k)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


LABEL_SETS = {
    "fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"],
    "mnist": [str(i) for i in range(10)],
}


def load_image(path, shape, invert=False):
    """An image file as model input: grey or RGB to match the channels, resized to (H, W),
    scaled to [0, 1] (Pillow, an optional extra)."""
    try:
        from PIL import Image
    except ImportError:
        raise ValueError("kilnet predict needs Pillow: pip install pillow (or kilnet[image])") from None
    import numpy as np
    h, w, c = shape
    import warnings
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and raises at twice that: refuse both, the
            # pixels are decoded only after this check (a small file can declare a huge image)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            img = img.convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
    except (OSError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None
    a = np.asarray(img, dtype=np.float32) / 255.0
    if invert:
        a = 1.0 - a
    return a.reshape(h, w, c)


def cmd_predict(args) -> int:
    import numpy as np

    from kilnet.models import load_model
    model = load_model(args.model, compile=False)
    shape = tuple(model.input_shape[1:])
    if len(shape) != 3:
        raise ValueError(f"kilnet predict classifies images; this model takes inputs of shape {shape}")
    x = np.stack([load_image(p, shape, args.invert) for p in args.images])
    probs = model.predict(x, verbose=0)
    n = probs.shape[-1]
    if args.labels in LABEL_SETS:
        names = LABEL_SETS[args.labels]
    elif args.labels:
        names = [s.strip() for s in args.labels.split(",")]
    else:
        names = [str(i) for i in range(n)]
    if len(names) != n:
        raise ValueError(f"--labels gives {len(names)} names but the model has {n} outputs")
    for path, p in zip(args.images, probs):
        top = np.argsort(p)[::-1][:args.top]
        print(f"{path}: " + ", ".join(f"{names[i]} {p[i]:.3f}" for i in top))
    return 0


def cmd_info(args) -> int:
    import numpy as np

    import kilnet
    from kilnet import backend
    print(f"kilnet {kilnet.__version__}")
    print(f"python {platform.python_version()} ({sys.executable}), numpy {np.__version__}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"build: {backend.build_info()}")
    from kilnet.bench import cpu_model, simd_flags
    level, best = backend.simd_level(), backend.machine_simd_level()
    print(f"cpu: {cpu_model()}; flags {simd_flags()}")
    print(f"simd level in use: {level}" + (f" (lowered by KILNET_SIMD={os.environ.get('KILNET_SIMD')})"
                                           if level != best else ""))
    print(f"machine simd level: {best}")
    print(f"threads: {backend.get_num_threads()}")
    # The FMA peak of one thread at each level this process can run (levels above the one in
    # use are refused: KILNET_SIMD lowered it), 0.05 s each.
    levels = ("scalar", "avx2", "avx512")
    peaks = [f"{lv} {backend.fma_peak_gflops(1, 0.05, lv):.1f}" for lv in levels[:levels.index(level) + 1]]
    above = levels[levels.index(level) + 1:levels.index(best) + 1]
    print("measured FMA peak, 1 thread: " + ", ".join(peaks) + " GFLOP/s"
          + (f" ({', '.join(above)}: not measured, above the level in use)" if above else ""))
    print(f"sgemm micro-kernel: {backend.gemm_kernel()}")
    print(f"freed arrays: {backend.malloc_policy()}")
    print(f"store-ahead staging: {'on' if backend.stages_store_ahead() else 'off'} (on for Intel; KILNET_STAGING=on|off)")
    dot = backend.bf16_dot_peak_gflops(1, 0.05)
    print(f"bfloat16 GEMM: {backend.bf16_level()}"
          + (f" (KILNET_BF16={os.environ['KILNET_BF16']})" if "KILNET_BF16" in os.environ else "")
          + (f"; measured VDPBF16PS peak, 1 thread: {dot:.1f} GFLOP/s" if dot else ""))
    cuda = backend.cuda_compiled_module()
    if cuda is not None:
        archs = cuda.compiled_architectures()
        n = cuda.device_count()
        print(f"cuda: compiled (architectures {archs})")
        if n:
            names = ", ".join(cuda.device_name(i) for i in range(n))
            print(f"gpu: {n} usable ({names})")
        else:
            print("gpu: none usable (no NVIDIA driver or device)")
    else:
        print("cuda: not compiled (no CUDA compiler at build time)")
        print("gpu: not usable")
    return 0


def draw_attribution(image, attribution, title, out, segments=None):
    """Save the input beside its attribution heat map (matplotlib, an optional extra). With
    `segments` (LIME's superpixel labels, (H, W)) their boundaries are drawn on the input."""
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
    if segments is not None:
        seg = np.asarray(segments)
        edge = np.zeros(seg.shape, bool)
        edge[:-1] |= seg[:-1] != seg[1:]
        edge[:, :-1] |= seg[:, :-1] != seg[:, 1:]
        overlay = np.zeros(seg.shape + (4,), np.float32)
        overlay[edge] = (1.0, 0.8, 0.0, 0.45)           # superpixel boundaries in yellow
        axes[0].imshow(overlay)
        axes[0].set_title("input, superpixels")
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
    segments = None
    if args.method == "lime":
        e = explain.lime(model, x[0], mode="image", num_samples=args.samples, target=target,
                         n_segments=args.segments, seed=0)
        segments = e.segments
        att = np.repeat(e.heatmap()[..., None], x.shape[-1], -1)[None] / x.shape[-1]
    elif args.method == "saliency":
        att = explain.saliency(model, x, target=target)
    elif args.method == "smoothgrad":
        att = explain.smoothgrad(model, x, target=target, seed=0)
    else:
        att = explain.integrated_gradients(model, x, target=target, steps=args.steps)
    name = lambda c: CLASS_NAMES[c] if len(probs) == len(CLASS_NAMES) else str(c)
    title = (f"test #{args.index}: true {name(int(y_test[args.index]))}, predicted {name(pred)} "
             f"({probs[pred]:.2f}); {args.method} for {name(target)}")
    draw_attribution(x[0], att[0], title, args.out, segments)
    print(title)
    if args.method == "lime":
        top = ", ".join(f"{i} ({e.weights[i]:+.3f})" for i in e.top(5, positive_only=True))
        print(f"lime: {e.weights.size} superpixels, local R^2 {e.score:.3f}; top superpixels: {top}")
    print(f"wrote {args.out}")
    return 0


def cmd_bench(args) -> int:
    from kilnet import bench
    bench.run(threads=args.threads, quick=args.quick, only=args.only, per_process=args.per_process,
              rounds=args.rounds)
    return 0


def _non_negative(text):
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _positive(text):
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def build_parser():
    p = argparse.ArgumentParser(prog="kilnet", description="kilnet: Keras-style deep learning on hand-written kernels")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a CNN on Fashion-MNIST (the canonical one by default) and print test accuracy",
                       description="Train Conv2D(32,3x3,relu) → Flatten → Dense(10,softmax) with Adam on "
                                   "Fashion-MNIST (or --model small-cnn: convolutions with batch norm, pooling "
                                   "and dropout, 87,594 parameters), then print the test loss and accuracy.")
    t.add_argument("--epochs", type=int, default=None, help="number of epochs (default 10; small-cnn 15)")
    t.add_argument("--batch-size", type=int, default=None, help="batch size (default 32; small-cnn 64)")
    t.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    t.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    t.add_argument("--out", default="model.h5", help="where to save the trained model (default model.h5; '' to skip)")
    t.add_argument("--seed", type=int, default=None, help="random seed for a repeatable run")
    t.add_argument("--limit", type=_non_negative, default=0, help="train on the first N images only (quick checks)")
    t.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2), help="fit verbosity (default 1)")
    t.add_argument("--model", default="canonical",
                   help="which model: canonical (default) or another registered name, e.g. small-cnn, or "
                        "char-transformer (a character-level Transformer on Python source text; --epochs "
                        "counts rounds of 100 steps)")
    t.add_argument("--validation-split", type=float, default=0.0,
                   help="fraction of the training images held out for validation curves (default 0)")
    t.add_argument("--plot", default="", help="write loss/accuracy curves to this PNG (needs matplotlib)")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel training over the ranks of an MPI job (run under mpirun, e.g. "
                        "`mpirun -n 2 kilnet train --distributed`); --batch-size is per rank; "
                        "see docs/distributed.md")
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("explain", help="draw a Fashion-MNIST test image beside its attribution heat map",
                       description="Explain one Fashion-MNIST test prediction of a saved model: the input "
                                   "beside its attribution (integrated gradients by default).")
    e.add_argument("model", help="a model saved with model.save (.h5)")
    e.add_argument("--index", type=int, default=0, help="test image index (default 0)")
    e.add_argument("--out", default="explain.png", help="output PNG (default explain.png)")
    e.add_argument("--method", choices=("ig", "saliency", "smoothgrad", "lime"), default="ig",
                   help="attribution method (default ig: integrated gradients; lime: superpixels "
                        "masked in and out, a weighted linear surrogate)")
    e.add_argument("--steps", type=int, default=50, help="integration steps for ig (default 50)")
    e.add_argument("--target", type=int, default=None, help="class to explain (default: the predicted one)")
    e.add_argument("--samples", type=_positive, default=1000, help="perturbed samples for lime (default 1000)")
    e.add_argument("--segments", type=_positive, default=50, help="about how many superpixels for lime (default 50)")
    e.set_defaults(func=cmd_explain)
    pr = sub.add_parser("predict", help="classify image files with a saved model",
                        description="Classify image files with a saved model and print the top classes "
                                    "with their probabilities. Images are converted to the model's "
                                    "channels and size and scaled to [0, 1].")
    pr.add_argument("model", help="a model saved with model.save (.h5)")
    pr.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    pr.add_argument("--labels", default="", help="class names: fashion-mnist, mnist, or a comma-separated list")
    pr.add_argument("--top", type=_positive, default=3, help="how many classes to print (default 3)")
    pr.add_argument("--invert", action="store_true", help="invert grey levels (dark objects on light ground)")
    pr.set_defaults(func=cmd_predict)
    i = sub.add_parser("info", help="print version, build flags, SIMD level, threads and CUDA status")
    i.set_defaults(func=cmd_info)
    b = sub.add_parser("bench", help="time every CPU kernel family and the training step vs peak, numpy, PyTorch",
                       description="Time kilnet's CPU kernels (GEMM, convolution, activation, softmax "
                                   "cross-entropy, Adam, pooling, batch norm, RNN) and the canonical "
                                   "training step: ms, GFLOP/s or GB/s, % of this machine's measured FMA "
                                   "peak, and the ratio against numpy and PyTorch when installed.")
    b.add_argument("--threads", nargs="*", default=None, metavar="N",
                   help="thread counts, e.g. --threads 1 2 or 1,2 (default: 1 and all cores)")
    b.add_argument("--quick", action="store_true", help="fewer repeats and smaller shapes (seconds, not minutes)")
    b.add_argument("--only", default="", metavar="FAMILY[,FAMILY]",
                   help="only these families: gemm, conv2d, activation, softmax_ce, adam, pooling, "
                        "batchnorm, rnn, train_step")
    b.add_argument("--rounds", type=_positive, default=None,
                   help="rounds of every library in rotating order; each time is the median over rounds "
                        "(default 5 with --quick, else 7)")
    b.add_argument("--per-process", action="store_true",
                   help="time each library in a process of its own, taking the same turns (slower to start; "
                        "no thread pool or allocation of another library can be in the way)")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"kilnet: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:            # `kilnet info | head`: the reader left; not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
