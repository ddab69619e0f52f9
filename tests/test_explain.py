"""Explanations (saliency, SmoothGrad, integrated gradients) and the evaluation reports."""
import numpy as np
import pytest

from conftest import numeric_grad
from kilnet import explain, metrics
from kilnet.layers import Conv2D, Dense, Flatten
from kilnet.models import Sequential
from kilnet.utils import set_random_seed


def _net(act):
    set_random_seed(5)
    m = Sequential([Conv2D(4, 3, activation=act, input_shape=(7, 7, 1)), Flatten(),
                    Dense(16, activation="tanh"), Dense(3, activation="softmax")])
    for layer in m.layers:
        for w in layer.weights:
            w[...] += np.random.default_rng(0).normal(0, 0.05, w.shape).astype(np.float32)
    return m


@pytest.fixture(scope="module")
def cnn():
    return _net("relu")


def test_saliency_equals_finite_differences():
    smooth = _net("tanh")   # no ReLU kinks for the finite differences to straddle
    x = np.random.default_rng(1).uniform(0, 1, (2, 7, 7, 1)).astype(np.float32)
    sal = explain.saliency(smooth, x, target=[0, 2])
    for i, t in enumerate([0, 2]):
        xi = x[i:i + 1].copy()
        num = numeric_grad(lambda: float(smooth.predict(xi)[0, t]), xi, eps=1e-2)
        np.testing.assert_allclose(sal[i:i + 1], num, rtol=0.05, atol=2e-4)


def test_explanations_leave_parameter_gradients_alone(cnn):
    for layer in cnn.layers:
        for s in layer._specs:
            getattr(layer, "d" + s.attr)[...] = 7.0
    x = np.random.default_rng(2).uniform(0, 1, (3, 7, 7, 1))
    explain.saliency(cnn, x)
    explain.integrated_gradients(cnn, x, steps=8)
    for layer in cnn.layers:
        for s in layer._specs:
            assert (getattr(layer, "d" + s.attr) == 7.0).all()


def test_integrated_gradients_completeness(cnn):
    x = np.random.default_rng(3).uniform(0, 1, (4, 7, 7, 1)).astype(np.float32)
    attr, delta = explain.integrated_gradients(cnn, x, steps=50, return_delta=True)
    f = cnn.predict(x)
    f0 = cnn.predict(np.zeros_like(x))
    t = f.argmax(1)
    gap = f[np.arange(4), t] - f0[np.arange(4), t]
    np.testing.assert_allclose(attr.reshape(4, -1).sum(1), gap, rtol=0.01, atol=1e-4)
    assert np.abs(delta).max() <= 0.01 * np.abs(gap).max() + 1e-4


def test_smoothgrad_shape_and_seed(cnn):
    x = np.random.default_rng(4).uniform(0, 1, (2, 7, 7, 1))
    a = explain.smoothgrad(cnn, x, n_samples=5, seed=3)
    b = explain.smoothgrad(cnn, x, n_samples=5, seed=3)
    assert a.shape == x.shape
    np.testing.assert_array_equal(a, b)


def test_explain_bad_input(cnn):
    x = np.zeros((2, 7, 7, 1))
    with pytest.raises(ValueError, match="out of range"):
        explain.saliency(cnn, x, target=5)
    with pytest.raises(ValueError, match="expects inputs"):
        explain.saliency(cnn, np.zeros((2, 6, 7, 1)))
    with pytest.raises(ValueError, match="steps"):
        explain.integrated_gradients(cnn, x, steps=0)


def test_confusion_matrix_and_report():
    y = np.array([0, 0, 1, 1, 2, 2, 2])
    p = np.array([0, 1, 1, 1, 2, 0, 2])
    cm = metrics.confusion_matrix(y, p)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 2]])
    r = metrics.classification_report(y, p, output_dict=True)
    assert r["1"]["precision"] == pytest.approx(2 / 3) and r["1"]["recall"] == 1.0
    assert r["2"]["f1-score"] == pytest.approx(0.8) and r["accuracy"] == pytest.approx(5 / 7)
    text = metrics.classification_report(y, np.eye(3)[p], target_names=["a", "b", "c"])
    assert "precision" in text and "macro avg" in text
    with pytest.raises(ValueError, match="different lengths"):
        metrics.confusion_matrix(y, p[:3])


def test_per_group(cnn):
    x = np.random.default_rng(5).uniform(0, 1, (30, 7, 7, 1))
    y = cnn.predict(x).argmax(1)
    y[:5] = (y[:5] + 1) % 3          # the first five (group "a") are all wrong
    groups = np.array(["a"] * 10 + ["b"] * 20)
    rep = metrics.per_group(cnn, x, y, groups)
    assert rep["groups"]["a"] == {"accuracy": 0.5, "count": 10}
    assert rep["groups"]["b"]["accuracy"] == 1.0
    assert rep["max_gap"] == pytest.approx(0.5) and rep["worst"] == "a" and rep["best"] == "b"
    assert rep["overall"] == pytest.approx(25 / 30)
