"""Row-by-row Fashion-MNIST: each 28x28 image is read as a sequence of 28 rows of 28 pixels,
and a recurrent layer's last state is classified by a Dense softmax.

    python examples/rnn_fashion_mnist.py                      # SimpleRNN(128), 5 epochs
    python examples/rnn_fashion_mnist.py --cell lstm --epochs 5 --batch-size 64
    python examples/rnn_fashion_mnist.py --cell gru --limit 6000 --epochs 1   # a quick look

Needs the data set: `apt-get install dataset-fashion-mnist` (or $KILNET_DATA, see the README).
"""
import argparse
import time

import numpy as np

import kilnet
from kilnet.datasets import fashion_mnist
from kilnet.layers import GRU, LSTM, Dense, SimpleRNN
from kilnet.models import Sequential
from kilnet.utils import set_random_seed

CELLS = {"simple_rnn": SimpleRNN, "lstm": LSTM, "gru": GRU}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cell", choices=CELLS, default="simple_rnn")
    ap.add_argument("--units", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--limit", type=int, default=0, help="train on the first N images only")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", default=None, help="write the trained model to this .h5 file")
    args = ap.parse_args()
    if args.threads:
        kilnet.set_num_threads(args.threads)
    set_random_seed(args.seed)

    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data()
    x_train = (x_train / 255.0).astype(np.float32)       # (60000, 28, 28): 28 steps of 28 pixels
    x_test = (x_test / 255.0).astype(np.float32)
    if args.limit:
        x_train, y_train = x_train[:args.limit], y_train[:args.limit]

    model = Sequential([CELLS[args.cell](args.units, input_shape=(28, 28)),
                        Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.summary()
    t0 = time.perf_counter()
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
              validation_data=(x_test, y_test), verbose=2)
    loss, acc = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    print(f"{args.cell}({args.units}): test accuracy {acc:.4f}, loss {loss:.4f} "
          f"({time.perf_counter() - t0:.0f} s, {kilnet.get_num_threads()} threads)")
    if args.save:
        model.save(args.save)
        print(f"saved to {args.save}")


if __name__ == "__main__":
    main()
