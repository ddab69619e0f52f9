"""Callbacks with Keras names and behaviour, and the training feedback."""
import csv

import numpy as np
import pytest

from kilnet import callbacks as cb
from kilnet.layers import Dense
from kilnet.models import Sequential, load_model
from kilnet.utils import set_random_seed


def data(n=200):
    r = np.random.default_rng(0)
    x = r.normal(size=(n, 4))
    y = (x[:, 0] > 0).astype(np.int64)
    return x, y


def model(lr=0.01):
    set_random_seed(0)
    from kilnet.optimizers import Adam
    m = Sequential([Dense(8, activation="relu", input_shape=(4,)), Dense(2, activation="softmax")])
    m.compile(optimizer=Adam(lr), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


def test_hooks_called_in_keras_order():
    calls = []
    rec = cb.LambdaCallback(on_train_begin=lambda logs: calls.append("train_begin"),
                            on_epoch_begin=lambda e, logs: calls.append(f"epoch_begin{e}"),
                            on_train_batch_end=lambda b, logs: calls.append("batch"),
                            on_epoch_end=lambda e, logs: calls.append(f"epoch_end{e}:{sorted(logs)}"),
                            on_train_end=lambda logs: calls.append("train_end"))
    x, y = data(64)
    model().fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[rec], validation_split=0.5)
    assert calls == ["train_begin", "epoch_begin0", "batch",
                     "epoch_end0:['accuracy', 'loss', 'val_accuracy', 'val_loss']",
                     "epoch_begin1", "batch", "epoch_end1:['accuracy', 'loss', 'val_accuracy', 'val_loss']",
                     "train_end"]


def test_early_stopping_restores_best():
    x, y = data()
    m = model(lr=0.5)     # a learning rate high enough to make val_loss bounce
    es = cb.EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)
    h = m.fit(x, y, epochs=30, verbose=0, validation_split=0.3, callbacks=[es])
    assert len(h.history["loss"]) < 30
    best = int(np.argmin(h.history["val_loss"]))
    assert es.best_epoch == best
    assert m.evaluate(x[140:], y[140:], verbose=0)[0] == pytest.approx(h.history["val_loss"][best], rel=1e-5)


def test_model_checkpoint_best_only(tmp_path):
    x, y = data()
    path = tmp_path / "best.h5"
    ck = cb.ModelCheckpoint(path, monitor="val_accuracy", save_best_only=True)
    m = model()
    m.fit(x, y, epochs=3, verbose=0, validation_split=0.3, callbacks=[ck])
    assert path.exists()
    assert load_model(path).evaluate(x[140:], y[140:], verbose=0)[1] == pytest.approx(ck.best)
    ck2 = cb.ModelCheckpoint(str(tmp_path / "m{epoch:02d}.h5"))
    m.fit(x, y, epochs=2, verbose=0, callbacks=[ck2])
    assert (tmp_path / "m01.h5").exists() and (tmp_path / "m02.h5").exists()


def test_reduce_lr_and_scheduler():
    x, y = data()
    m = model(lr=0.01)
    h = m.fit(x, y, epochs=3, verbose=0, callbacks=[cb.LearningRateScheduler(lambda e, lr: 0.01 / (e + 1))])
    assert m.optimizer.learning_rate == pytest.approx(0.01 / 3)
    assert h.history["learning_rate"] == pytest.approx([0.01, 0.005, 0.01 / 3])
    # the first epoch sets the best value; after that min_delta=10 means no epoch improves on it
    rl = cb.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=10.0)
    m.fit(x, y, epochs=3, verbose=0, callbacks=[rl])
    assert m.optimizer.learning_rate == pytest.approx(0.01 / 3 / 4)


def test_csv_logger(tmp_path):
    x, y = data()
    path = tmp_path / "log.csv"
    model().fit(x, y, epochs=3, verbose=0, callbacks=[cb.CSVLogger(path)])
    rows = list(csv.reader(open(path)))
    assert rows[0] == ["epoch", "accuracy", "loss"] and len(rows) == 4 and rows[3][0] == "2"


def test_terminate_on_nan(capsys):
    x, y = data()
    x[150, 0] = 1e39       # overflows to inf in float32
    m = model()
    m.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="NaN or Inf"):
        m.fit(x, np.eye(2)[y], verbose=0)     # non-finite input is refused up front
    x[150, 0] = 3e19       # finite in float32, but its square in the loss is not
    m.compile(optimizer="sgd", loss="mse")
    h = m.fit(x, np.eye(2)[y] * 1e19, epochs=5, batch_size=10, shuffle=False, verbose=0,
              callbacks=[cb.TerminateOnNaN()])
    assert len(h.history["loss"]) == 1 and not np.isfinite(h.history["loss"][0])
    assert "invalid loss" in capsys.readouterr().out and m.nan_stop[0] == 0


def test_verbose_modes(capsys):
    x, y = data(64)
    m = model()
    m.fit(x, y, epochs=2, verbose=0)
    assert capsys.readouterr().out == ""
    m.fit(x, y, epochs=2, verbose=2)
    out = capsys.readouterr().out
    assert out.count("Epoch ") == 2 and "loss:" in out and "accuracy:" in out
    m.fit(x, y, epochs=1, verbose=1, validation_data=(x, y))   # not a terminal: one line per epoch
    assert "val_loss:" in capsys.readouterr().out


def test_callback_type_checked():
    x, y = data(32)
    with pytest.raises(TypeError, match="Callback"):
        model().fit(x, y, verbose=0, callbacks=[lambda: None])


@pytest.mark.parametrize("distributed", [False, True])
@pytest.mark.parametrize("bad", [1, "early_stopping", object()])
def test_non_callback_is_a_clear_type_error(bad, distributed):
    x, y = data(40)
    with pytest.raises(TypeError, match="must be kilnet.callbacks.Callback instances"):
        model().fit(x, y, epochs=1, verbose=0, callbacks=[bad], distributed=distributed)
