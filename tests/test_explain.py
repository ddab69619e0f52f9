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
            w.assign(w.numpy() + np.random.default_rng(0).normal(0, 0.05, w.shape).astype(np.float32))
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


def test_integrated_gradients_completeness_on_canonical_cnn():
    """Within 1% at 50 steps on the canonical CNN trained on (part of) Fashion-MNIST."""
    from kilnet.cli import canonical_model
    from kilnet.datasets import fashion_mnist
    try:
        (xt, yt), (xe, _) = fashion_mnist.load_data()
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST not installed")
    set_random_seed(0)
    model = canonical_model()
    model.fit((xt[:3000] / 255.0).reshape(-1, 28, 28, 1), yt[:3000], epochs=1, verbose=0)
    x = (xe[:8] / 255.0).reshape(-1, 28, 28, 1)
    attr, delta = explain.integrated_gradients(model, x, steps=50, return_delta=True)
    p = model.predict(x)
    gap = p.max(1) - model.predict(np.zeros_like(x))[np.arange(8), p.argmax(1)]
    assert (np.abs(delta) <= 0.01 * np.abs(gap)).all(), (delta, gap)


def test_shap_kernel_explainer_uses_predict():
    shap = pytest.importorskip("shap")
    set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 5)).astype(np.float32)
    y = (x[:, 0] - x[:, 3] > 0).astype(np.int64)
    model = Sequential([Dense(8, activation="relu", input_shape=(5,)), Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=15, verbose=0)
    assert model.evaluate(x, y, verbose=0)[1] > 0.9
    explainer = shap.KernelExplainer(lambda a: model.predict(a, verbose=0)[:, 1], x[:20])
    values = np.asarray(explainer.shap_values(x[:10], nsamples=100, silent=True))
    assert values.shape == (10, 5)
    top = set(np.argsort(np.abs(values).mean(0))[-2:])
    assert top == {0, 3}
    # local accuracy: the SHAP values sum to f(x) - E[f]
    f = model.predict(x[:10])[:, 1]
    np.testing.assert_allclose(values.sum(1) + explainer.expected_value, f, atol=1e-4)


def test_cli_explain_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    import subprocess
    import sys
    from kilnet.datasets import fashion_mnist
    try:
        fashion_mnist.load_data()
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST not installed")
    m = _net("relu")
    # a model with the canonical input shape, trained for a few steps
    from kilnet.cli import canonical_model
    model = canonical_model()
    model.fit(np.random.default_rng(0).uniform(size=(64, 28, 28, 1)), np.arange(64) % 10, verbose=0)
    path = tmp_path / "m.h5"
    model.save(path)
    out = tmp_path / "e.png"
    r = subprocess.run([sys.executable, "-m", "kilnet", "explain", str(path), "--index", "7", "--out", str(out),
                        "--steps", "10"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "test #7" in r.stdout
    del m


@pytest.mark.parametrize("cell", ["SimpleRNN", "LSTM", "GRU"])
def test_integrated_gradients_completeness_on_rnn(cell):
    """Within 1% at 50 steps on recurrent models: the input gradients flow through time."""
    from kilnet import layers
    set_random_seed(1)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 12, 5)).astype(np.float32)
    y = (x[:, :, 0].sum(1) > 0).astype(np.int64)
    model = Sequential([getattr(layers, cell)(16, input_shape=(12, 5)), Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=3, verbose=0)
    attr, delta = explain.integrated_gradients(model, x[:6], steps=50, return_delta=True)
    p = model.predict(x[:6])
    t = p.argmax(1)
    gap = p[np.arange(6), t] - model.predict(np.zeros_like(x[:6]))[np.arange(6), t]
    assert (np.abs(delta) <= 0.01 * np.abs(gap) + 1e-5).all(), (delta, gap)
    xi = x[:1].copy()
    sal = explain.saliency(model, xi, target=int(t[0]))
    num = numeric_grad(lambda: float(model.predict(xi)[0, t[0]]), xi, eps=1e-2)
    np.testing.assert_allclose(sal, num, rtol=0.05, atol=3e-4)
