"""Sequential: compile/fit/evaluate/predict, string names, repeatability, exact resume after
save/load, and the errors a user gets for bad input."""
import numpy as np
import pytest

import kilnet
from kilnet.layers import Activation, Conv2D, Dense, Flatten, InputLayer
from kilnet.models import Sequential, load_model
from kilnet.utils import set_random_seed


def small_data(n=256, seed=0):
    """4 classes: which quadrant of an 8x8 noise image is brighter."""
    r = np.random.default_rng(seed)
    y = r.integers(0, 4, n)
    x = r.uniform(0, 0.6, (n, 8, 8, 1))
    for q in range(4):
        x[y == q, (q // 2) * 4:(q // 2) * 4 + 4, (q % 2) * 4:(q % 2) * 4 + 4] += 0.4
    return x, y


def cnn(n_classes=4):
    return Sequential([Conv2D(4, 3, activation="relu", input_shape=(8, 8, 1)), Flatten(),
                       Dense(n_classes, activation="softmax")])


def test_fit_learns_and_reports_history():
    set_random_seed(1)
    x, y = small_data()
    model = cnn()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    h = model.fit(x, y, epochs=8, batch_size=16, verbose=0, validation_split=0.25)
    assert set(h.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(h.history["loss"]) == 8 and h.epoch == list(range(8))
    assert h.history["loss"][-1] < h.history["loss"][0]
    loss, acc = model.evaluate(x, y, verbose=0)
    assert acc > 0.6
    p = model.predict(x)
    assert p.shape == (256, 4) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-5)
    assert np.mean(p.argmax(1) == y) == pytest.approx(acc)


@pytest.mark.parametrize("loss,opt,metric,make_y,units,act", [
    ("mse", "sgd", "mae", lambda y: np.eye(4)[y], 4, "linear"),
    ("mae", "adam", "mse", lambda y: np.eye(4)[y], 4, "sigmoid"),
    ("categorical_crossentropy", "adam", "accuracy", lambda y: np.eye(4)[y], 4, "softmax"),
    ("binary_crossentropy", "sgd", "accuracy", lambda y: (y % 2).reshape(-1, 1), 1, "sigmoid"),
    ("binary_crossentropy", "adam", "accuracy", lambda y: np.eye(4)[y], 4, "sigmoid"),
])
def test_every_loss_trains(loss, opt, metric, make_y, units, act):
    set_random_seed(2)
    x, y = small_data()
    yy = make_y(y)
    model = Sequential([Flatten(input_shape=(8, 8, 1)), Dense(16, activation="tanh"), Dense(units, activation=act)])
    model.compile(optimizer=opt, loss=loss, metrics=[metric])
    h = model.fit(x, yy, epochs=5, batch_size=32, verbose=0)
    assert h.history["loss"][-1] < h.history["loss"][0]
    assert metric in h.history


def test_fused_softmax_crossentropy_matches_unfused():
    """The fused softmax + CE path gives the same loss and gradients as the plain composition."""
    set_random_seed(3)
    x, y = small_data(64)
    a = Sequential([Flatten(input_shape=(8, 8, 1)), Dense(4, activation="softmax")])
    b = Sequential([Flatten(input_shape=(8, 8, 1)), Dense(4), Activation("softmax")])
    b.set_weights(a.get_weights())
    for m in (a, b):
        m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    class PlainCE(kilnet.losses.SparseCategoricalCrossentropy):
        fuses_with = None        # force the plain softmax-then-CE composition on b
    b.compile(optimizer="sgd", loss=PlainCE())
    assert a(x[:2])._keras_logits[0] == "softmax"   # a's output remembers its logits: the loss fuses
    a.fit(x, y, epochs=2, batch_size=8, verbose=0, shuffle=False)
    b.fit(x, y, epochs=2, batch_size=8, verbose=0, shuffle=False)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-4, atol=1e-5)


def test_same_seed_same_run():
    x, y = small_data()
    runs = []
    for _ in range(2):
        set_random_seed(7)
        m = cnn()
        m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        m.fit(x, y, epochs=2, verbose=0)
        runs.append(m.get_weights())
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_save_load_predict_identical_and_resume_exact(tmp_path):
    x, y = small_data()
    set_random_seed(11)
    straight = cnn()
    straight.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    straight.fit(x, y, epochs=2, batch_size=16, verbose=0)

    set_random_seed(11)
    first = cnn()
    first.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    first.fit(x, y, epochs=1, batch_size=16, verbose=0)
    path = tmp_path / "m.h5"
    first.save(path)
    loaded = load_model(path)
    np.testing.assert_array_equal(first.predict(x), loaded.predict(x))
    assert loaded.optimizer.iterations == first.optimizer.iterations
    loaded.fit(x, y, epochs=1, batch_size=16, verbose=0)
    for a, b in zip(straight.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_keras_style_names_and_summary(capsys):
    m = Sequential()
    m.add(InputLayer(shape=(8, 8, 1)))
    m.add(Conv2D(2, 3))
    m.add(Flatten())
    m.add(Dense(3))
    assert m.built and m.count_params() == (9 * 2 + 2) + (72 * 3 + 3)
    m.summary()
    out = capsys.readouterr().out
    assert "Total params: 239" in out and "(None, 6, 6, 2)" in out


def test_lazy_build_from_data():
    m = Sequential([Dense(3), Dense(2)])
    assert not m.built
    p = m.predict(np.ones((5, 4)))
    assert p.shape == (5, 2) and m.input_shape == (None, 4)


def test_inputs_converted_like_keras():
    m = Sequential([Dense(2, input_shape=(3,))])
    for x in (np.ones((4, 3), np.float64), np.ones((4, 3), np.int32), [[1, 2, 3]] * 4, np.ones((4, 3), bool)):
        assert m.predict(x).dtype == np.float32
    # non-contiguous input works too
    assert m.predict(np.ones((4, 6))[:, ::2]).shape == (4, 2)


def test_partial_last_batch_and_batch_sizes():
    set_random_seed(0)
    x, y = small_data(37)
    m = cnn()
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    m.fit(x, y, batch_size=16, epochs=2, verbose=0)
    np.testing.assert_allclose(m.predict(x, batch_size=5), m.predict(x, batch_size=37), rtol=1e-5, atol=1e-6)


class TestBadInput:
    def setup_method(self):
        self.m = cnn()
        self.x, self.y = small_data(32)

    def compiled(self):
        self.m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return self.m

    def test_fit_before_compile(self):
        with pytest.raises(RuntimeError, match="must be compiled"):
            self.m.fit(self.x, self.y)

    def test_wrong_input_shape(self):
        with pytest.raises(ValueError, match=r"expects inputs of shape \(batch, 8, 8, 1\)"):
            self.compiled().fit(np.ones((4, 9, 8, 1)), np.zeros(4))
        with pytest.raises(ValueError, match="expects inputs"):
            self.m.predict(np.ones((4, 8, 8)))

    def test_labels_out_of_range(self):
        with pytest.raises(ValueError, match="label 7 is out of range"):
            self.compiled().fit(self.x, np.full(32, 7), verbose=0)
        with pytest.raises(ValueError, match="out of range"):
            self.m.fit(self.x, np.full(32, -1), verbose=0)
        with pytest.raises(ValueError, match="whole numbers"):
            self.m.fit(self.x, np.full(32, 1.5), verbose=0)

    def test_length_mismatch(self):
        with pytest.raises(ValueError, match="different numbers of samples"):
            self.compiled().fit(self.x, self.y[:10], verbose=0)

    def test_strings_objects_empty(self):
        self.compiled()
        with pytest.raises(TypeError, match="numeric"):
            self.m.fit(np.full((32, 8, 8, 1), "a"), self.y, verbose=0)
        with pytest.raises(TypeError, match="numeric"):
            self.m.predict(np.empty((2, 8, 8, 1), dtype=object))
        with pytest.raises(ValueError, match="empty"):
            self.m.fit(np.zeros((0, 8, 8, 1)), np.zeros(0), verbose=0)
        with pytest.raises(TypeError, match="labels must be integers"):
            self.m.fit(self.x, np.array(["a"] * 32), verbose=0)

    def test_nan_input(self):
        x = self.x.copy()
        x[3, 2, 2, 0] = np.nan
        with pytest.raises(ValueError, match="NaN"):
            self.compiled().fit(x, self.y, verbose=0)

    def test_unknown_names_list_valid_ones(self):
        with pytest.raises(ValueError, match="unknown optimizer 'adamx'; valid names: adagrad, adam, adamw, rmsprop, sgd"):
            self.m.compile(optimizer="adamx", loss="mse")
        with pytest.raises(ValueError, match="unknown loss 'msee'; valid names: .*mse"):
            self.m.compile(optimizer="adam", loss="msee")
        with pytest.raises(ValueError, match="unknown metric 'acuracy'; valid names: .*accuracy"):
            self.m.compile(optimizer="adam", loss="mse", metrics=["acuracy"])

    def test_bad_fit_arguments(self):
        self.compiled()
        with pytest.raises(ValueError, match="batch_size"):
            self.m.fit(self.x, self.y, batch_size=0)
        with pytest.raises(ValueError, match="validation_split"):
            self.m.fit(self.x, self.y, validation_split=1.5)

    def test_set_weights_checks(self):
        w = self.m.get_weights()
        with pytest.raises(ValueError, match="weight arrays"):
            self.m.set_weights(w[:-1])
        w[0] = np.zeros((2, 2))
        with pytest.raises(ValueError, match="must have shape"):
            self.m.set_weights(w)


def test_set_num_threads_roundtrip():
    old = kilnet.get_num_threads()
    kilnet.set_num_threads(1)
    assert kilnet.get_num_threads() == 1
    kilnet.set_num_threads(old)
    with pytest.raises(ValueError):
        kilnet.set_num_threads(0)
