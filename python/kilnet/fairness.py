"""Correcting a measured bias before training.

reweighing (Kamiran & Calders 2012, "Data preprocessing techniques for classification without
discrimination", section 4.2): each (group, label) cell of the training data gets the weight

    w(g, c) = P(g) P(c) / P(g, c) = n_g n_c / (n n_gc)

the weight that makes group and label independent in the weighted data: a cell that the
data over-represents (e.g. positives of a favoured group) is weighted down, an under-represented
one up. Pass the result to fit as sample_weight. The measures it is meant to improve are in
kilnet.metrics (demographic_parity_difference, equalized_odds_difference, per_group).
"""
from __future__ import annotations

import numpy as np

from kilnet.metrics import _groups, _labels

__all__ = ["reweighing"]


def reweighing(y, groups) -> np.ndarray:
    """Kamiran-Calders reweighing: one float32 weight per sample, n_g n_c / (n n_gc).

    y: class indices (or one-hot / probability rows: the argmax); groups: one label per
    sample (ints, strings, ...). The weights average 1 over the data set; within every group
    the weighted label distribution equals the overall one."""
    t = _labels(y, "y")
    g = _groups(groups, len(t))
    _, gi = np.unique(g, return_inverse=True)
    _, ci = np.unique(t, return_inverse=True)
    gi, ci = gi.reshape(-1), ci.reshape(-1)
    ng, nc = np.bincount(gi), np.bincount(ci)
    cell = gi * len(nc) + ci
    ngc = np.bincount(cell, minlength=len(ng) * len(nc))
    n = len(t)
    return (ng[gi] * nc[ci] / (n * ngc[cell].astype(np.float64))).astype(np.float32)
