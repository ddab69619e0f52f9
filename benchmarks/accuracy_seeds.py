"""Test accuracy of issue 2's canonical program after every epoch, over seeds, in kilnet or in
Keras 3 (the program the issue's 0.875 / 0.905 bars come from), so the two can be compared on
the same data with the same evaluation.

    python benchmarks/accuracy_seeds.py --library kilnet --seeds 0 1 2 --epochs 10
    KERAS_BACKEND=jax python benchmarks/accuracy_seeds.py --library keras --seeds 0 1 2

Keras is not a kilnet dependency: `pip install keras jax` in a separate environment (it does
not need kilnet's build; the data comes from kilnet.datasets when kilnet is importable, else
from the IDX files under $KILNET_DATA or /usr/share/datasets/fashion-mnist). One line of JSON
per seed: {"library", "seed", "acc": [test accuracy after epoch 1, 2, ...]}.
"""
import argparse
import gzip
import json
import os
import sys

import numpy as np

from machine_info import machine   # benchmarks/ is on sys.path


def load_fashion_mnist():
    try:
        from kilnet.datasets import fashion_mnist
        return fashion_mnist.load_data()
    except ImportError:   # a Keras-only environment: read the IDX files directly
        pass
    root = os.environ.get("KILNET_DATA", "/usr/share/datasets/fashion-mnist")

    def idx(prefix):
        name = next(f for f in sorted(os.listdir(root)) if f.startswith(prefix))
        with gzip.open(os.path.join(root, name)) as f:
            raw = f.read()
        dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(raw[3])]
        return np.frombuffer(raw, np.uint8, offset=4 + 4 * raw[3]).reshape(dims)
    return (idx("train-images"), idx("train-labels")), (idx("t10k-images"), idx("t10k-labels"))


def build(library):
    if library == "keras":
        import keras
        from keras import layers
        model = keras.Sequential([keras.Input((28, 28, 1)), layers.Conv2D(32, (3, 3), activation="relu"),
                                  layers.Flatten(), layers.Dense(10, activation="softmax")])
    else:
        from kilnet.layers import Conv2D, Dense, Flatten
        from kilnet.models import Sequential
        model = Sequential([Conv2D(32, (3, 3), activation="relu", input_shape=(28, 28, 1)),
                            Flatten(), Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--library", choices=["kilnet", "keras"], default="kilnet")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--limit", type=int, default=0, help="train on the first N images only (a quick check)")
    args = ap.parse_args()
    print(f"# machine: {machine()}", file=sys.stderr)   # stdout holds only the JSON lines
    (x_train, y_train), (x_test, y_test) = load_fashion_mnist()
    # the canonical program's preprocessing, verbatim
    x_train = (x_train / 255.0).reshape(-1, 28, 28, 1)
    x_test = (x_test / 255.0).reshape(-1, 28, 28, 1)
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    for seed in args.seeds:
        if args.library == "keras":
            import keras
            keras.utils.set_random_seed(seed)
        else:
            from kilnet.utils import set_random_seed
            set_random_seed(seed)
        model = build(args.library)
        acc = []
        for _ in range(args.epochs):
            model.fit(x_train, y_train, epochs=1, verbose=0)
            acc.append(round(float(model.evaluate(x_test, y_test, batch_size=256, verbose=0)[1]), 4))
        print(json.dumps({"library": args.library, "seed": seed, "acc": acc}), flush=True)


if __name__ == "__main__":
    main()
