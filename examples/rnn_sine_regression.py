"""Time-series regression: predict the next value of a noisy sum of sines from the previous
`--window` values, with an LSTM (or GRU / SimpleRNN) and a Dense(1) head trained on MSE.

    python examples/rnn_sine_regression.py
    python examples/rnn_sine_regression.py --cell gru --window 40 --epochs 20

It prints the test MSE next to two baselines: repeating the last value, and the best a perfect
model could do (the noise variance, since the noise is unpredictable).
"""
import argparse

import numpy as np

from kilnet.layers import GRU, LSTM, Dense, SimpleRNN
from kilnet.models import Sequential
from kilnet.utils import set_random_seed

CELLS = {"simple_rnn": SimpleRNN, "lstm": LSTM, "gru": GRU}


def make_series(n, noise, rng):
    t = np.arange(n, dtype=np.float64)
    clean = (np.sin(2 * np.pi * t / 50) + 0.5 * np.sin(2 * np.pi * t / 17 + 1.0)
             + 0.3 * np.sin(2 * np.pi * t / 7.3 + 2.0))
    return (clean + noise * rng.standard_normal(n)).astype(np.float32)


def windows(series, window):
    """(samples, window, 1) inputs and the value that follows each window."""
    idx = np.arange(window)[None, :] + np.arange(len(series) - window)[:, None]
    return series[idx][..., None], series[window:][:, None]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cell", choices=CELLS, default="lstm")
    ap.add_argument("--units", type=int, default=32)
    ap.add_argument("--window", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    series = make_series(6000, args.noise, rng)
    split = 5000
    x_train, y_train = windows(series[:split], args.window)
    x_test, y_test = windows(series[split - args.window:], args.window)

    model = Sequential([CELLS[args.cell](args.units, input_shape=(args.window, 1)), Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(x_train, y_train, batch_size=32, epochs=args.epochs, validation_split=0.1, verbose=2)
    mse = model.evaluate(x_test, y_test, verbose=0)
    last = float(np.mean((x_test[:, -1, 0] - y_test[:, 0]) ** 2))
    print(f"test MSE {mse:.4f}   (repeat-last-value baseline {last:.4f}, noise floor {args.noise ** 2:.4f})")


if __name__ == "__main__":
    main()
