"""Keras-style programs on the engine, written as a Keras user writes them with only the import
changed: the functional API, a residual model with layers.add, two inputs and two outputs,
subclassed models and layers, GradientTape loops and a train_step override. Each trains on data
made here (a learnable rule) to a level Keras 3 reaches on the same program; PyTorch checks
outputs and gradients of the same network with the same weights."""
import numpy as np
import pytest

import kilnet as keras
from kilnet import layers, ops


def blobs(n=600, d=12, k=3, seed=0):
    """k Gaussian clusters in d dimensions: a learnable classification task."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2.0, (k, d))
    y = rng.integers(0, k, n)
    x = (centers[y] + rng.normal(0, 1.0, (n, d))).astype(np.float32)
    return x, y


@pytest.fixture(autouse=True)
def seed():
    keras.utils.set_random_seed(0)


def test_functional_mlp_trains():
    x, y = blobs()
    inputs = keras.Input(shape=(12,))
    h = layers.Dense(32, activation="relu")(inputs)
    h = layers.Dense(32, activation="relu")(h)
    outputs = layers.Dense(3, activation="softmax")(h)
    model = keras.Model(inputs=inputs, outputs=outputs, name="mlp")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = model.fit(x, y, epochs=8, batch_size=32, verbose=0, validation_split=0.2)
    assert hist.history["val_accuracy"][-1] > 0.9
    assert set(hist.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert model.predict(x[:5]).shape == (5, 3)
    assert [type(l).__name__ for l in model.layers] == ["InputLayer", "Dense", "Dense", "Dense"]


def test_toy_resnet_with_add_and_summary(capsys):
    x, y = blobs(d=16)
    inputs = keras.Input(shape=(16,))
    h = layers.Dense(16, activation="relu")(inputs)
    r = layers.Dense(16, activation="relu")(h)
    r = layers.Dense(16)(r)
    h = layers.add([h, r])
    h = layers.Activation("relu")(h)
    outputs = layers.Dense(3, activation="softmax")(h)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=6, batch_size=32, verbose=0)
    assert model.evaluate(x, y, verbose=0)[1] > 0.9
    model.summary()
    out = capsys.readouterr().out
    assert "Connected to" in out and "add" in out and "Total params" in out


def test_two_inputs_two_outputs_loss_weights():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(512, 6)).astype(np.float32)
    b = rng.normal(size=(512, 4)).astype(np.float32)
    cls = (a[:, 0] + b[:, 0] > 0).astype(np.int64)
    reg = (a[:, 1] - 2 * b[:, 1]).astype(np.float32)[:, None]
    ia, ib = keras.Input((6,), name="a"), keras.Input((4,), name="b")
    h = layers.concatenate([layers.Dense(16, activation="relu")(ia), layers.Dense(16, activation="relu")(ib)])
    out_c = layers.Dense(2, activation="softmax", name="cls")(h)
    out_r = layers.Dense(1, name="reg")(h)
    model = keras.Model([ia, ib], [out_c, out_r])
    model.compile(optimizer="adam", loss={"cls": "sparse_categorical_crossentropy", "reg": "mse"},
                  loss_weights={"cls": 1.0, "reg": 0.5}, metrics={"cls": ["accuracy"]})
    hist = model.fit({"a": a, "b": b}, {"cls": cls, "reg": reg}, epochs=25, batch_size=16, verbose=0)
    assert set(hist.history) == {"loss", "cls_loss", "reg_loss", "cls_accuracy"}
    h = hist.history
    assert h["cls_accuracy"][-1] > 0.9 and h["reg_loss"][-1] < 0.3 * h["reg_loss"][0]
    np.testing.assert_allclose(h["loss"][-1], h["cls_loss"][-1] + 0.5 * h["reg_loss"][-1], rtol=0.05)
    pc, pr = model.predict([a[:7], b[:7]])
    assert pc.shape == (7, 2) and pr.shape == (7, 1)
    with pytest.raises(ValueError, match="nope"):
        model.fit({"a": a, "nope": b}, {"cls": cls, "reg": reg}, verbose=0)
    with pytest.raises(ValueError, match="outputs"):
        model.compile(optimizer="adam", loss={"cls": "mse", "other": "mse"})


class MLP(keras.Model):
    def __init__(self, units=32, classes=3):
        super().__init__()
        self.hidden = layers.Dense(units, activation="relu")
        self.drop = layers.Dropout(0.3)
        self.out = layers.Dense(classes, activation="softmax")

    def call(self, inputs, training=None):
        return self.out(self.drop(self.hidden(inputs), training=training))


def test_subclassed_model_with_dropout():
    x, y = blobs()
    model = MLP()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=8, batch_size=32, verbose=0)
    assert model.evaluate(x, y, verbose=0)[1] > 0.9
    assert len(model.trainable_variables) == 4
    p1, p2 = model.predict(x[:8]), model.predict(x[:8])
    np.testing.assert_array_equal(p1, p2)              # inference: dropout off
    t1 = np.asarray(model(x[:8], training=True))
    assert not np.allclose(t1, p1)                     # training=True reaches the Dropout inside


class Scale(layers.Layer):
    """A custom layer with its own weights and no backward: y = x * w + b (per feature)."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="w")
        self.b = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="b")

    def call(self, x):
        return ops.tanh(x * self.w + self.b)

    def get_config(self):
        return super().get_config()


def test_custom_layer_with_ops_trains_and_matches_torch():
    torch = pytest.importorskip("torch")
    x, y = blobs()
    inputs = keras.Input((12,))
    h = Scale()(inputs)
    outputs = layers.Dense(3, activation="softmax")(h)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, epochs=10, batch_size=32, verbose=0)
    assert model.evaluate(x, y, verbose=0)[1] > 0.9
    # The same network in PyTorch with the same weights: outputs and gradients
    w, b, k, kb = [np.asarray(v) for v in model.get_weights()]
    tw, tb, tk, tkb = (torch.tensor(v, requires_grad=True, dtype=torch.float64) for v in (w, b, k, kb))
    tx = torch.tensor(x[:16], dtype=torch.float64)
    tout = torch.softmax(torch.tanh(tx * tw + tb) @ tk + tkb, dim=1)
    tloss = torch.nn.functional.nll_loss(torch.log(tout), torch.tensor(y[:16]))
    tloss.backward()
    with keras.GradientTape() as tape:
        pred = model(x[:16])
        loss = keras.losses.SparseCategoricalCrossentropy()(y[:16], pred)
    grads = tape.gradient(loss, model.trainable_variables)
    np.testing.assert_allclose(np.asarray(pred), tout.detach().numpy(), rtol=1e-4, atol=1e-6)
    for g, t in zip(grads, (tw, tb, tk, tkb)):
        np.testing.assert_allclose(np.asarray(g), t.grad.numpy(), rtol=1e-3, atol=1e-6)


def test_custom_training_loop_with_gradient_tape():
    x, y = blobs()
    model = keras.Sequential([layers.Dense(32, activation="relu", input_shape=(12,)), layers.Dense(3)])
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    opt = keras.optimizers.Adam(1e-2)
    for epoch in range(5):
        for i in range(0, len(x), 32):
            with keras.GradientTape() as tape:
                logits = model(x[i:i + 32], training=True)
                loss = loss_fn(y[i:i + 32], logits)
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
    acc = (np.asarray(model(x)).argmax(1) == y).mean()
    assert acc > 0.9


class CustomStep(keras.Model):
    def train_step(self, data):
        x, y = data
        with keras.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(y=y, y_pred=y_pred)
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        for m in self.metrics:
            if m.name == "loss":
                m.update_state(loss)
            else:
                m.update_state(y, y_pred)
        self.steps_seen = getattr(self, "steps_seen", 0) + 1
        return {m.name: m.result() for m in self.metrics}


class TwoLayer(CustomStep):
    def __init__(self):
        super().__init__()
        self.d1 = layers.Dense(16, activation="relu")
        self.d2 = layers.Dense(3, activation="softmax")

    def call(self, x, training=None):
        return self.d2(self.d1(x))


def test_custom_train_step_trains():
    x, y = blobs()
    model = TwoLayer()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = model.fit(x, y, epochs=8, batch_size=32, verbose=0)
    assert model.steps_seen == 8 * 19
    assert hist.history["accuracy"][-1] > 0.9
    assert hist.history["loss"][-1] < hist.history["loss"][0]


def test_shared_layer_accumulates_both_gradients():
    shared = layers.Dense(4, use_bias=False)
    a, b = keras.Input((3,)), keras.Input((3,))
    model = keras.Model([a, b], layers.add([shared(a), shared(b)]))
    xa = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    xb = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
    with keras.GradientTape() as tape:
        out = ops.sum(model([xa, xb]))
    (g,) = tape.gradient(out, [shared.trainable_variables[0]])
    np.testing.assert_allclose(np.asarray(g), np.tile((xa + xb).sum(0)[:, None], (1, 4)), rtol=1e-5)


def test_nested_models():
    inner = keras.Sequential([layers.Dense(8, activation="relu", input_shape=(4,)), layers.Dense(4)])
    i = keras.Input((4,))
    o = layers.Dense(2, activation="softmax")(inner(i))
    model = keras.Model(i, o)
    assert len(model.trainable_variables) == 6
    x = np.random.default_rng(0).normal(size=(512, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=15, batch_size=16, verbose=0)
    assert model.evaluate(x, y, verbose=0)[1] > 0.85


def test_bad_input_errors():
    i = keras.Input((4,))
    with pytest.raises(ValueError, match=r"add.*\(None, 4\).*\(None, 3\)"):
        layers.add([layers.Dense(4)(i), layers.Dense(3)(i)])
    other = keras.Input((4,), name="stray")
    with pytest.raises(ValueError, match="stray"):
        keras.Model(i, layers.Dense(2)(other))
    v = keras.Variable(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(3, 2\)"):
        v.assign(np.zeros((3, 2)))
    t = ops.convert_to_tensor(np.ones((3, 2), np.float32))
    with keras.GradientTape() as tape:
        tape.watch(t)
        y = t * 2.0
    with pytest.raises(ValueError, match="not a scalar"):
        tape.gradient(y, [t])


def test_compile_after_predict_and_custom_layer_in_sequential():
    """A subclassed model used before compile binds its losses on the first batch; a Sequential
    holding a layer with no shape rule builds on its first call."""
    x, y = blobs(n=64)
    model = MLP()
    model.predict(x[:4])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    assert set(model.fit(x, y, epochs=1, verbose=0).history) == {"loss", "accuracy"}
    seq = keras.Sequential([layers.Dense(8, input_shape=(12,)), Scale(), layers.Dense(3, activation="softmax")])
    seq.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    seq.fit(x, y, epochs=1, verbose=0)
    assert seq.predict(x[:2]).shape == (2, 3) and len(seq.trainable_variables) == 6


def test_symbolic_arithmetic_and_ops_on_keras_tensors():
    """x + shortcut, ops.tanh(x) and indexing on KerasTensors record op nodes, as in Keras 3."""
    torch = pytest.importorskip("torch")
    i = keras.Input((6,))
    d = layers.Dense(6, activation="relu")
    h = ops.tanh(d(i) + i) * 2.0
    out = h[:, :4]
    model = keras.Model(i, out)
    x = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    k, b = (torch.tensor(np.asarray(v), dtype=torch.float64, requires_grad=True) for v in model.get_weights())
    tx = torch.tensor(x, dtype=torch.float64)
    tout = (torch.tanh(torch.relu(tx @ k + b) + tx) * 2.0)[:, :4]
    tout.sum().backward()
    with keras.GradientTape() as tape:
        y = model(x)
        s = ops.sum(y)
    gk, gb = tape.gradient(s, model.trainable_variables)
    np.testing.assert_allclose(np.asarray(y), tout.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(gk), k.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gb), b.grad.numpy(), rtol=1e-4, atol=1e-5)
    assert [type(l).__name__ for l in model.layers] == ["InputLayer", "Dense"]
    with pytest.raises(ValueError, match=r"add on symbolic input\(s\) of shape \(None, 6\) and \(None, 3\)"):
        i + keras.Input((3,))


def test_fit_step_gradients_of_shared_and_skipped_dense_layers():
    """The trainer lets Dense overwrite its gradient views on their first write in a step
    (no zeroing): a layer called twice must still get the sum of both gradients, and one not
    reached in a step must get zero (SGD leaves it unchanged)."""
    class M(keras.Model):
        def __init__(self):
            super().__init__()
            self.shared = layers.Dense(5, activation="tanh")
            self.side = layers.Dense(5)
            self.out = layers.Dense(2, activation="softmax")

        def call(self, x):
            h = self.shared(self.shared(x))
            if x.shape[0] == 4:            # the last, partial batch skips `side`
                return self.out(h)
            return self.out(h + self.side(x))

    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 5)).astype(np.float32)
    y = rng.integers(0, 2, 12)
    m = M()
    m.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    m.predict(x[:1])
    ref = [v.numpy().copy() for v in m.trainable_variables]
    # the expected step on the full batches, from a GradientTape on a copy of the weights
    with keras.GradientTape() as tape:
        pred = m(x[:8], training=True)
        loss = keras.losses.SparseCategoricalCrossentropy()(y[:8], pred)
    grads = tape.gradient(loss, m.trainable_variables)
    for v, r in zip(m.trainable_variables, ref):
        v.assign(r)
    m.fit(x[:8], y[:8], batch_size=8, epochs=1, shuffle=False, verbose=0)
    for v, r, g in zip(m.trainable_variables, ref, grads):
        np.testing.assert_allclose(v.numpy(), r - 0.1 * np.asarray(g), rtol=1e-5, atol=1e-6)
    side = [v.numpy().copy() for v in m.side.trainable_variables]
    m.fit(x[8:], y[8:], batch_size=4, epochs=1, shuffle=False, verbose=0)   # `side` not reached
    for v, s in zip(m.side.trainable_variables, side):
        np.testing.assert_array_equal(v.numpy(), s)


def test_wrapped_dense_gradients_in_fit_and_tape():
    """TimeDistributed(Dense): the wrapper's backward writes the wrapped Dense's gradients
    (not on the tape itself): fit's SGD step equals the GradientTape gradient, which is not None."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 4, 3)).astype(np.float32)
    y = rng.normal(size=(6, 4, 2)).astype(np.float32)
    m = keras.Sequential([layers.Input((4, 3)), layers.TimeDistributed(layers.Dense(2))])
    m.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    ref = [v.numpy().copy() for v in m.trainable_variables]
    with keras.GradientTape() as tape:
        loss = keras.losses.MeanSquaredError()(y, m(x, training=True))
    grads = tape.gradient(loss, m.trainable_variables)
    assert all(g is not None for g in grads)
    for _ in range(2):   # the second step checks that nothing stale accumulates
        before = [v.numpy().copy() for v in m.trainable_variables]
        with keras.GradientTape() as tape:
            loss = keras.losses.MeanSquaredError()(y, m(x, training=True))
        grads = tape.gradient(loss, m.trainable_variables)
        m.train_on_batch(x, y)
        for v, b, g in zip(m.trainable_variables, before, grads):
            np.testing.assert_allclose(v.numpy(), b - 0.1 * np.asarray(g), rtol=1e-5, atol=1e-6)
    assert not np.allclose(ref[0], m.trainable_variables[0].numpy())
