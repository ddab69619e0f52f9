"""sample_weight, class_weight and weighted_metrics, with Keras 3 (torch backend) as the
reference: losses, train_on_batch, fit, evaluate, custom train_step, errors."""
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras3 = pytest.importorskip("keras")

import kilnet  # noqa: E402
from kilnet import layers  # noqa: E402


def _rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("name,logits", [
    ("MeanSquaredError", False), ("MeanAbsoluteError", False), ("BinaryCrossentropy", False),
    ("BinaryCrossentropy", True), ("CategoricalCrossentropy", False), ("CategoricalCrossentropy", True),
    ("SparseCategoricalCrossentropy", False), ("SparseCategoricalCrossentropy", True)])
def test_loss_with_sample_weight_matches_keras(name, logits):
    rng = _rng(1)
    n, k = 7, 5
    z = rng.normal(size=(n, k)).astype(np.float32)
    if name.startswith("Binary"):
        y = rng.integers(0, 2, (n, k)).astype(np.float32)
        p = z if logits else 1 / (1 + np.exp(-z))
    elif name.startswith("Sparse"):
        y = rng.integers(0, k, n)
        p = z if logits else np.exp(z) / np.exp(z).sum(1, keepdims=True)
    elif name.startswith("Categorical"):
        y = np.eye(k, dtype=np.float32)[rng.integers(0, k, n)]
        p = z if logits else np.exp(z) / np.exp(z).sum(1, keepdims=True)
    else:
        y = rng.normal(size=(n, k)).astype(np.float32)
        p = z
    p = p.astype(np.float32)
    w = rng.uniform(0, 3, n).astype(np.float32)
    kw = {"from_logits": True} if logits else {}
    want = float(getattr(keras3.losses, name)(**kw)(y, p, sample_weight=w))
    ours = getattr(kilnet.losses, name)(**kw)
    assert ours(y, p, sample_weight=w) == pytest.approx(want, rel=1e-5, abs=1e-6)
    # on the tape: the value and the gradient (each sample's scaled by its weight)
    t = kilnet.Tensor(p.copy())
    with kilnet.GradientTape() as tape:
        tape.watch(t)
        loss = ours(y, t, sample_weight=w)
    g = tape.gradient(loss, t)
    assert float(loss.numpy()) == pytest.approx(want, rel=1e-5, abs=1e-6)
    import torch
    tp = torch.tensor(p, requires_grad=True)
    torch_loss = getattr(keras3.losses, name)(**kw)(torch.tensor(y), tp, sample_weight=torch.tensor(w))
    torch_loss.backward()
    np.testing.assert_allclose(np.asarray(g), tp.grad.numpy(), rtol=1e-4, atol=1e-6)


def _twin_models(seed=0, d=6, k=3):
    """The same Dense network in Keras 3 and kilnet with the same weights."""
    keras3.utils.set_random_seed(seed)
    km = keras3.Sequential([keras3.Input((d,)), keras3.layers.Dense(8, activation="relu"),
                            keras3.layers.Dense(k, activation="softmax")])
    ours = kilnet.Sequential([layers.Input((d,)), layers.Dense(8, activation="relu"),
                              layers.Dense(k, activation="softmax")])
    ours.set_weights([np.asarray(w) for w in km.get_weights()])
    return km, ours


def _data(n=40, d=6, k=3, seed=0):
    rng = _rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = rng.integers(0, k, n)
    return x, y


def test_train_on_batch_sample_weight_matches_keras():
    km, ours = _twin_models()
    x, y = _data()
    w = _rng(3).uniform(0, 2, len(x)).astype(np.float32)
    for m, opt in ((km, keras3.optimizers.SGD(0.5)), (ours, kilnet.optimizers.SGD(0.5))):
        m.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    lk = km.train_on_batch(x, y, sample_weight=w, return_dict=True)
    lo = ours.train_on_batch(x, y, sample_weight=w, return_dict=True)
    assert lo["loss"] == pytest.approx(float(lk["loss"]), rel=1e-5)
    for a, b in zip(km.get_weights(), ours.get_weights()):
        np.testing.assert_allclose(b, np.asarray(a), rtol=1e-4, atol=1e-6)
    # without weights the step differs: the weights did something
    km2, ours2 = _twin_models()
    ours2.compile(optimizer=kilnet.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    ours2.train_on_batch(x, y)
    assert not np.allclose(ours2.get_weights()[0], ours.get_weights()[0])


def test_fit_class_weight_matches_keras():
    km, ours = _twin_models(seed=1)
    x, y = _data(n=64, seed=1)
    cw = {0: 1.0, 1: 3.0, 2: 0.5}
    km.compile(optimizer=keras3.optimizers.SGD(0.2), loss="sparse_categorical_crossentropy")
    ours.compile(optimizer=kilnet.optimizers.SGD(0.2), loss="sparse_categorical_crossentropy")
    hk = km.fit(x, y, batch_size=16, epochs=2, shuffle=False, class_weight=cw, verbose=0)
    ho = ours.fit(x, y, batch_size=16, epochs=2, shuffle=False, class_weight=cw, verbose=0)
    np.testing.assert_allclose(ho.history["loss"], hk.history["loss"], rtol=1e-4)
    for a, b in zip(km.get_weights(), ours.get_weights()):
        np.testing.assert_allclose(b, np.asarray(a), rtol=1e-4, atol=1e-5)


def test_fit_sample_weight_one_hot_and_validation_split():
    km, ours = _twin_models(seed=2)
    x, y = _data(n=50, seed=2)
    yh = np.eye(3, dtype=np.float32)[y]
    w = _rng(5).uniform(0, 2, len(x)).astype(np.float32)
    for m, opt in ((km, keras3.optimizers.SGD(0.1)), (ours, kilnet.optimizers.SGD(0.1))):
        m.compile(optimizer=opt, loss="categorical_crossentropy", metrics=["accuracy"],
                  weighted_metrics=["accuracy"])
    hk = km.fit(x, yh, batch_size=10, epochs=2, shuffle=False, sample_weight=w, validation_split=0.2, verbose=0)
    ho = ours.fit(x, yh, batch_size=10, epochs=2, shuffle=False, sample_weight=w, validation_split=0.2, verbose=0)
    assert set(ho.history) == set(hk.history)
    for key in hk.history:
        np.testing.assert_allclose(ho.history[key], hk.history[key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_evaluate_sample_weight_and_weighted_metrics_match_keras():
    km, ours = _twin_models(seed=3)
    x, y = _data(n=33, seed=3)
    w = _rng(7).uniform(0, 2, len(x)).astype(np.float32)
    for m in (km, ours):
        m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  weighted_metrics=["accuracy"])
    want = km.evaluate(x, y, sample_weight=w, batch_size=8, return_dict=True, verbose=0)
    got = ours.evaluate(x, y, sample_weight=w, batch_size=8, return_dict=True, verbose=0)
    assert set(got) == set(want)
    for k in want:
        assert got[k] == pytest.approx(float(want[k]), rel=1e-5), k
    assert got["weighted_accuracy"] != got["accuracy"] or np.all(w == w[0])
    got_b = ours.test_on_batch(x, y, sample_weight=w, return_dict=True)
    want_b = km.test_on_batch(x, y, sample_weight=w, return_dict=True)
    assert got_b["loss"] == pytest.approx(float(want_b["loss"]), rel=1e-5)


def test_two_outputs_sample_weight_per_output():
    rng = _rng(4)
    x = rng.normal(size=(30, 5)).astype(np.float32)
    ya, yb = rng.normal(size=(30, 1)).astype(np.float32), rng.integers(0, 2, (30, 1)).astype(np.float32)
    wa, wb = rng.uniform(0, 2, 30).astype(np.float32), rng.uniform(0, 2, 30).astype(np.float32)

    def build(lib, L):
        i = lib.Input((5,))
        h = L.Dense(4, activation="tanh")(i)
        return lib.Model(i, {"a": L.Dense(1, name="a")(h), "b": L.Dense(1, activation="sigmoid", name="b")(h)})

    keras3.utils.set_random_seed(0)
    km = build(keras3, keras3.layers)
    ours = build(kilnet, layers)
    ours.set_weights([np.asarray(v) for v in km.get_weights()])
    for m in (km, ours):
        m.compile(optimizer="sgd", loss={"a": "mse", "b": "binary_crossentropy"})
    want = km.evaluate(x, {"a": ya, "b": yb}, sample_weight={"a": wa, "b": wb}, return_dict=True, verbose=0)
    got = ours.evaluate(x, {"a": ya, "b": yb}, sample_weight={"a": wa, "b": wb}, return_dict=True, verbose=0)
    for k in ("loss", "a_loss", "b_loss"):
        assert got[k] == pytest.approx(float(want[k]), rel=1e-5), k


def test_custom_train_step_receives_sample_weight():
    seen = []

    class M(kilnet.Model):
        def __init__(self):
            super().__init__()
            self.d = layers.Dense(2, activation="softmax")

        def call(self, x):
            return self.d(x)

        def train_step(self, data):
            x, y, sw = data
            seen.append(np.asarray(sw).copy())
            with kilnet.GradientTape() as tape:
                loss = self.compute_loss(x=x, y=y, y_pred=self(x, training=True), sample_weight=sw)
            grads = tape.gradient(loss, self.trainable_variables)
            self.optimizer.apply(grads, self.trainable_variables)
            return {"loss": loss}

    x, y = _data(n=12, d=3, k=2)
    w = np.arange(12, dtype=np.float32)
    m = M()
    m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    m.fit(x, y, batch_size=4, shuffle=False, sample_weight=w, verbose=0)
    np.testing.assert_array_equal(np.concatenate(seen), w)


def test_bad_sample_weights_are_clear_errors():
    _, ours = _twin_models()
    x, y = _data(n=10)
    ours.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(10,\)"):
        ours.fit(x, y, sample_weight=np.ones(9), verbose=0)
    with pytest.raises(ValueError, match="non-negative"):
        ours.fit(x, y, sample_weight=-np.ones(10), verbose=0)
    with pytest.raises(ValueError, match="finite"):
        ours.evaluate(x, y, sample_weight=np.full(10, np.nan), verbose=0)
    with pytest.raises(TypeError, match="class_weight must be a dict"):
        ours.fit(x, y, class_weight=[1.0, 2.0], verbose=0)
    with pytest.raises(ValueError, match="not both"):
        ours.fit(x, y, class_weight={0: 1.0}, sample_weight=np.ones(10), verbose=0)
