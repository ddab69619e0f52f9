"""Writes the tf.keras 2 (.h5) files tests/test_saving_functional.py reads, with the inputs,
the predictions and the weights after one more training step that tf.keras computes from the
saved state (so the test checks the optimizer state restores exactly).

    python -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu tf-keras
    cd tests/data && TF_USE_LEGACY_KERAS=1 /tmp/tfenv/bin/python make_tf_keras2_files.py

Made with tensorflow-cpu 2.21.0 and tf-keras 2.21.0.
"""
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

L = keras.layers
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)


def functional():
    """Two inputs, two outputs, a shared layer, a nested Sequential and a nested functional model;
    losses and metrics per output as a dict, metrics as names and objects, loss_weights."""
    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    shared = L.Dense(5, activation="tanh", name="shared")
    seq = keras.Sequential([keras.Input((5,)), L.Dense(4, activation="relu", name="in1"), L.Dense(3, name="in2")],
                           name="inner_seq")
    ii = keras.Input((10,))
    fun = keras.Model(ii, L.Dense(3, activation="softmax", name="fd")(L.Dense(6, name="fh")(ii)), name="inner_fun")
    h1, h2 = shared(a), shared(L.Dense(4, name="pb")(b))
    cls = fun(L.Concatenate(name="cat")([h1, h2]))
    reg = seq(L.Add(name="add")([h1, h2]))
    m = keras.Model([a, b], [cls, reg], name="tf2_functional")
    m.compile(optimizer=keras.optimizers.Adam(0.01),
              loss={"inner_fun": "sparse_categorical_crossentropy", "inner_seq": keras.losses.MeanSquaredError()},
              loss_weights={"inner_fun": 1.0, "inner_seq": 0.5},
              metrics={"inner_fun": ["accuracy", keras.metrics.SparseCategoricalAccuracy(name="sca")],
                       "inner_seq": ["mae"]})
    x = [rng.uniform(size=(8, 4)).astype("f"), rng.uniform(size=(8, 3)).astype("f")]
    y = [np.arange(8) % 3, rng.uniform(size=(8, 3)).astype("f")]
    return m, x, y


def lists():
    """Losses, loss_weights and metrics as lists per output; SGD with momentum."""
    a = keras.Input((6,), name="inp")
    h = L.Dense(5, activation="relu", name="h")(a)
    o1 = L.Dense(1, activation="sigmoid", name="p")(h)
    o2 = L.Dense(2, name="q")(h)
    m = keras.Model(a, [o1, o2], name="tf2_lists")
    m.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=["binary_crossentropy", "mse"],
              loss_weights=[0.3, 0.7], metrics=[["accuracy"], ["mae", "mse"]])
    x = rng.uniform(size=(8, 6)).astype("f")
    y = [(np.arange(8) % 2).astype("f").reshape(-1, 1), rng.uniform(size=(8, 2)).astype("f")]
    return m, x, y


def sequential():
    """A Sequential with conv, batch norm and RMSprop (momentum, centered): slots in groups."""
    m = keras.Sequential([keras.Input((6, 6, 2)), L.Conv2D(3, 3, activation="relu", name="c"),
                          L.BatchNormalization(name="bn"), L.Flatten(name="f"), L.Dense(2, activation="softmax", name="d")],
                         name="tf2_seq")
    m.compile(optimizer=keras.optimizers.RMSprop(0.01, momentum=0.5, centered=True),
              loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    x = rng.uniform(size=(8, 6, 6, 2)).astype("f")
    y = np.arange(8) % 2
    return m, x, y


def leaf_weights(model):
    """(layer name/index, array) of every layer that is not a model, each weight by position."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from leaf_weights(layer)
        else:
            for i, w in enumerate(layer.get_weights()):
                yield f"{layer.name}/{i}", w


for name, make in (("tf2_functional", functional), ("tf2_lists", lists), ("tf2_seq", sequential)):
    m, x, y = make()
    m.fit(x, y, epochs=2, batch_size=4, shuffle=False, verbose=0)
    m.save(f"{name}.h5")
    pred = m.predict(x, verbose=0)
    pred = pred if isinstance(pred, list) else [pred]
    m.train_on_batch(x, y)   # one more step from the saved state
    xs = x if isinstance(x, list) else [x]
    ys = y if isinstance(y, list) else [y]
    np.savez(f"{name}.npz", **{f"x{i}": v for i, v in enumerate(xs)}, **{f"y{i}": v for i, v in enumerate(ys)},
             **{f"pred{i}": v for i, v in enumerate(pred)},
             **{f"after/{n}": w for n, w in leaf_weights(m)})
    print(name, "written", tf.__version__, keras.__version__)
