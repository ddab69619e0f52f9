"""A small CNN (87,594 parameters) for Fashion-MNIST: convolutions with batch normalization,
max pooling, dropout, and Adam with a cosine-decayed learning rate.

    python examples/small_cnn.py                 # 15 epochs, then the test accuracy
    python examples/small_cnn.py --epochs 2 --limit 6000    # a quick look

The same model is `kilnet train --model small-cnn` (kilnet.cli.small_cnn_model); its accuracy and
training time next to PyTorch are in benchmarks/RESULTS.md ("Small CNN").
"""
import argparse
import math
import time

import numpy as np

import kilnet
from kilnet.datasets import fashion_mnist
from kilnet.layers import Activation, BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxPooling2D
from kilnet.optimizers import Adam
from kilnet.schedules import CosineDecay


def conv_bn_relu(filters, **kwargs):
    # No bias in the convolution: the batch normalization's beta plays that part.
    return [Conv2D(filters, (3, 3), padding="same", use_bias=False, **kwargs), BatchNormalization(),
            Activation("relu")]


def build(total_steps):
    model = kilnet.Sequential([
        *conv_bn_relu(32, input_shape=(28, 28, 1)), MaxPooling2D(),       # 14x14x32
        *conv_bn_relu(64), MaxPooling2D(), Dropout(0.25),                  # 7x7x64
        *conv_bn_relu(64), Dropout(0.25),                                  # 7x7x64
        Flatten(), Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=Adam(learning_rate=CosineDecay(1e-3, decay_steps=total_steps)),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def main():
    ap = argparse.ArgumentParser(description="Train a small CNN on Fashion-MNIST")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--limit", type=int, default=0, help="train on the first N images only")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    kilnet.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data()
    x_train = (x_train / 255.0).reshape(-1, 28, 28, 1).astype(np.float32)
    x_test = (x_test / 255.0).reshape(-1, 28, 28, 1).astype(np.float32)
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]

    model = build(args.epochs * math.ceil(len(x_train) / args.batch_size))
    model.summary()
    t0 = time.perf_counter()
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=2)
    print(f"trained {args.epochs} epochs in {time.perf_counter() - t0:.0f}s")
    loss, acc = model.evaluate(x_test, y_test, batch_size=500, verbose=0)
    print(f"test loss {loss:.4f}, test accuracy {acc:.4f}")
    model.save("small_cnn.h5")


if __name__ == "__main__":
    main()
