"""Group fairness measures (kilnet.metrics) and Kamiran-Calders reweighing (kilnet.fairness)."""
import numpy as np
import pytest

from kilnet import fairness, metrics
from kilnet.layers import Dense
from kilnet.models import Sequential
from kilnet.utils import set_random_seed

Y = np.array([1, 1, 0, 0, 1, 0, 1, 1, 0, 0])
P = np.array([1, 0, 1, 0, 1, 0, 1, 1, 1, 1])
G = np.array(["a"] * 4 + ["b"] * 6)


def test_group_rates_by_hand():
    r = metrics.group_rates(Y, P, G)
    # a: y 1 1 0 0, p 1 0 1 0 -> selected 2/4, tpr 1/2, fpr 1/2
    assert r["a"] == {"count": 4, "selection_rate": 0.5, "tpr": 0.5, "fpr": 0.5, "accuracy": 0.5,
                      "positives": 2, "negatives": 2}
    # b: y 1 0 1 1 0 0, p 1 0 1 1 1 1 -> selected 5/6, tpr 3/3, fpr 2/3
    assert r["b"]["selection_rate"] == pytest.approx(5 / 6)
    assert r["b"]["tpr"] == 1.0 and r["b"]["fpr"] == pytest.approx(2 / 3)
    assert metrics.demographic_parity_difference(Y, P, G) == pytest.approx(5 / 6 - 0.5)
    assert metrics.demographic_parity_difference(None, P, G) == pytest.approx(1 / 3)
    assert metrics.equalized_odds_difference(Y, P, G) == pytest.approx(0.5)   # max(|1-.5|, |2/3-.5|)


def test_prediction_formats_agree():
    probs = np.where(P[:, None] == 1, 0.8, 0.3)                 # one sigmoid column
    two = np.c_[1 - probs, probs]                                # softmax rows
    for p in (probs, probs[:, 0], two, P.astype(np.float32)):
        assert metrics.demographic_parity_difference(Y, p, G) == pytest.approx(1 / 3)
        assert metrics.equalized_odds_difference(Y, p, G) == pytest.approx(0.5)
    # multiclass, one class against the rest
    y3, p3 = np.array([2, 0, 2, 1]), np.array([2, 2, 0, 1])
    r = metrics.group_rates(y3, p3, [0, 0, 1, 1], pos_label=2)
    assert r[0]["selection_rate"] == 1.0 and r[1]["selection_rate"] == 0.0
    assert r[1]["tpr"] == 0.0 and r[0]["fpr"] == 1.0


def test_undefined_rates_are_nan_and_skipped():
    r = metrics.group_rates([1, 1, 0, 0], [1, 0, 0, 1], [0, 0, 1, 1])
    assert np.isnan(r[0]["fpr"]) and np.isnan(r[1]["tpr"])
    assert metrics.equalized_odds_difference([1, 1, 0, 0], [1, 0, 0, 1], [0, 0, 1, 1]) == 0.0
    assert metrics.demographic_parity_difference(None, [1, 0], ["x", "x"]) == 0.0     # one group


def test_reweighing_formula_and_independence():
    w = fairness.reweighing(Y, G)
    assert w.dtype == np.float32 and w.shape == (10,)
    n = 10
    for gv in "ab":
        for c in (0, 1):
            m = (G == gv) & (Y == c)
            expected = (G == gv).sum() * (Y == c).sum() / (n * m.sum())
            np.testing.assert_allclose(w[m], expected, rtol=1e-6)
    # weighted: the positive rate is the same in every group, and the weights sum to n
    for gv in "ab":
        m = G == gv
        assert (w[m] * Y[m]).sum() / w[m].sum() == pytest.approx(Y.mean())
    assert w.sum() == pytest.approx(n)
    # one-hot labels give the same weights
    np.testing.assert_array_equal(fairness.reweighing(np.eye(2)[Y], G), w)
    # already independent: all ones
    np.testing.assert_allclose(fairness.reweighing([0, 1, 0, 1], [0, 0, 1, 1]), 1.0)


@pytest.mark.parametrize("call", [
    lambda: fairness.reweighing(Y, G[:5]),
    lambda: metrics.demographic_parity_difference(Y, P, G[:-1]),
    lambda: metrics.equalized_odds_difference(Y, P[:5], G),
    lambda: metrics.group_rates(Y, P, np.c_[G, G]),
    lambda: fairness.reweighing([], []),
    lambda: fairness.reweighing(Y, np.r_[np.nan, np.zeros(9)]),
    lambda: metrics.demographic_parity_difference(Y, np.linspace(-1, 2, 10), G),
    lambda: metrics.group_rates(Y, P, [None] * 10),
])
def test_bad_input(call):
    with pytest.raises(ValueError):
        call()


def _biased(n, seed):
    """Labels that favour group 1 beyond the legitimate feature (historical bias); the group is
    an input feature the model can use."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 2, n)
    skill, other = rng.normal(size=n), rng.normal(size=n)
    y = (skill + 1.2 * (g - 0.5) + 0.5 * rng.normal(size=n) > 0).astype(np.int64)
    return np.c_[skill, other, g].astype(np.float32), y, g


def _train(x, y, w, seed=0):
    set_random_seed(seed)
    m = Sequential([Dense(8, activation="relu", input_shape=(3,)), Dense(1, activation="sigmoid")])
    m.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    m.fit(x, y, epochs=20, batch_size=64, verbose=0, sample_weight=w)
    return m


def test_reweighing_reduces_demographic_parity_difference(capsys):
    x, y, g = _biased(4000, 0)
    xt, yt, gt = _biased(2000, 1)
    before = metrics.per_group(_train(x, y, None), xt, yt, gt)
    after = metrics.per_group(_train(x, y, fairness.reweighing(y, g)), xt, yt, gt, verbose=True)
    table = capsys.readouterr().out
    assert "selected" in table and "demographic parity difference" in table and "tpr" in table
    dpd0, dpd1 = before["demographic_parity_difference"], after["demographic_parity_difference"]
    assert dpd0 > 0.3                       # the model learned the bias
    assert dpd1 < 0.7 * dpd0, (dpd0, dpd1)   # reweighing removes a good part of it
    assert after["overall"] > 0.8            # at a small cost in accuracy
    # the report's figures are the metrics' functions on the model's predictions
    p = (_train(x, y, None).predict(xt) > 0.5).astype(int)
    assert before["demographic_parity_difference"] == pytest.approx(metrics.demographic_parity_difference(yt, p, gt))
    assert set(before["groups"][0]) == {"accuracy", "count", "selection_rate", "tpr", "fpr", "positives", "negatives"}
    assert str(before).splitlines()[0].split() == ["group", "count", "accuracy", "selected", "tpr", "fpr"]


def test_per_group_multiclass_with_pos_label():
    set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    m = Sequential([Dense(3, activation="softmax", input_shape=(4,))])
    y = m.predict(x).argmax(1)
    groups = np.repeat(["u", "v", "w"], 20)
    plain = metrics.per_group(m, x, y, groups)
    assert "demographic_parity_difference" not in plain and set(plain["groups"]["u"]) == {"accuracy", "count"}
    rep = metrics.per_group(m, x, y, groups, pos_label=2)
    sel = [((y == 2) & (groups == k)).mean() / (groups == k).mean() for k in "uvw"]
    assert rep["demographic_parity_difference"] == pytest.approx(max(sel) - min(sel))
    assert rep["equalized_odds_difference"] == 0.0          # predictions are the labels
    with pytest.raises(ValueError, match="one label per sample"):
        metrics.per_group(m, x, y, groups[:10])
