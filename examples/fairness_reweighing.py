"""Measure a model's bias between two groups, then reduce it by reweighing the training data.

    python examples/fairness_reweighing.py [--n 4000] [--bias 1.2] [--epochs 20] [--seed 0]

A synthetic hiring-style data set: a legitimate score, an irrelevant feature and the group
(0 or 1) as inputs; the historical labels favour group 1 by `--bias` beyond the score. A
small network trained on them learns the bias: its demographic parity difference (the gap in
the share of each group predicted positive) is large. Kamiran-Calders reweighing
(kilnet.fairness.reweighing) weights every (group, label) cell so that group and label are
independent in the weighted data; the same network trained with those sample weights is
measured again on the same held-out set.
"""
import argparse

import numpy as np

from kilnet import fairness, metrics
from kilnet.layers import Dense
from kilnet.models import Sequential
from kilnet.utils import set_random_seed

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=4000, help="training samples (the test set has half)")
ap.add_argument("--bias", type=float, default=1.2, help="how much the labels favour group 1")
ap.add_argument("--epochs", type=int, default=20)
ap.add_argument("--seed", type=int, default=0)
args = ap.parse_args()


def biased_data(n, seed):
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 2, n)
    score, other = rng.normal(size=n), rng.normal(size=n)
    y = (score + args.bias * (group - 0.5) + 0.5 * rng.normal(size=n) > 0).astype(np.int64)
    return np.c_[score, other, group].astype(np.float32), y, group


def train(x, y, sample_weight=None):
    set_random_seed(args.seed)
    model = Sequential([Dense(8, activation="relu", input_shape=(3,)), Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=args.epochs, batch_size=64, verbose=0, sample_weight=sample_weight)
    return model


x, y, g = biased_data(args.n, args.seed)
x_test, y_test, g_test = biased_data(args.n // 2, args.seed + 1)
print("positive rate of the training labels per group:",
      ", ".join(f"group {k}: {y[g == k].mean():.3f}" for k in (0, 1)))

print("\n--- trained on the data as it is")
before = metrics.per_group(train(x, y), x_test, y_test, g_test, verbose=True)

w = fairness.reweighing(y, g)
print("\nreweighing: weight per (group, label) cell:",
      ", ".join(f"({k}, {c}) {w[(g == k) & (y == c)][0]:.3f}" for k in (0, 1) for c in (0, 1)))
print("\n--- trained with sample_weight=reweighing(y, groups)")
after = metrics.per_group(train(x, y, w), x_test, y_test, g_test, verbose=True)

d0, d1 = before["demographic_parity_difference"], after["demographic_parity_difference"]
print(f"\ndemographic parity difference {d0:.3f} -> {d1:.3f} "
      f"({100 * (d0 - d1) / d0:.0f}% smaller), accuracy {before['overall']:.3f} -> {after['overall']:.3f}")
