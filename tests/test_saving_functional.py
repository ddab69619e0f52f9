"""Functional models in legacy .h5 files, both ways: kilnet -> kilnet, kilnet -> Keras 3,
Keras 3 -> kilnet and real tf.keras 2 files (tests/data, made by make_tf_keras2_files.py):
the config with inbound_nodes in the Keras 3 and the tf.keras 2 form, multi-input and
multi-output, shared layers, nested models, every training_config shape, optimizer state."""
import json
import os
import subprocess
import sys
import warnings

import h5py
import numpy as np
import pytest

import kilnet
from kilnet import layers as L
from kilnet.models import Sequential, load_model
from kilnet.utils import set_random_seed

HAVE_KERAS = subprocess.run([sys.executable, "-c", "import keras"], capture_output=True,
                            env={**os.environ, "KERAS_BACKEND": "torch"}).returncode == 0
needs_keras = pytest.mark.skipif(not HAVE_KERAS, reason="keras (3, torch backend) not installed")
DATA = os.path.join(os.path.dirname(__file__), "data")


def functional_model():
    a, b = kilnet.Input((4,), name="a"), kilnet.Input((3,), name="b")
    shared = L.Dense(5, activation="tanh", name="shared")
    inner = Sequential([kilnet.Input((5,)), L.Dense(4, activation="relu", name="in1"), L.Dense(3, name="in2")],
                       name="inner")
    ii = kilnet.Input((10,), name="ii")
    fun = kilnet.Model(ii, L.Dense(3, activation="softmax", name="fd")(L.Dense(6, name="fh")(ii)), name="fun")
    h1, h2 = shared(a), shared(L.Dense(4, name="pb")(b))
    return kilnet.Model([a, b], [fun(L.Concatenate(name="cat")([h1, h2])), inner(L.Add(name="add")([h1, h2]))],
                        name="fm")


def batch(rng):
    return ([rng.uniform(size=(8, 4)).astype("f"), rng.uniform(size=(8, 3)).astype("f")],
            [np.arange(8) % 3, rng.uniform(size=(8, 3)).astype("f")])


def trained(epochs=2):
    set_random_seed(0)
    x, y = batch(np.random.default_rng(0))
    m = functional_model()
    m.compile(optimizer="adam", loss={"fun": "sparse_categorical_crossentropy", "inner": "mse"},
              loss_weights={"fun": 1.0, "inner": 0.5}, metrics={"fun": ["accuracy"], "inner": ["mae"]})
    m.fit(x, y, epochs=epochs, batch_size=4, shuffle=False, verbose=0)
    return m, x, y


def leaf_weights(model):
    for layer in model.layers:
        if getattr(layer, "_is_model_class", False):
            yield from leaf_weights(layer)
        else:
            for i, w in enumerate(layer.get_weights()):
                yield f"{layer.name}/{i}", w


def test_functional_h5_roundtrip_and_resume(tmp_path):
    m, x, y = trained()
    m.save(tmp_path / "f.h5")
    with h5py.File(tmp_path / "f.h5", "r") as f:
        cfg = json.loads(f.attrs["model_config"])
        assert cfg["class_name"] == "Functional"
        assert [l["name"] for l in cfg["config"]["layers"]] == ["b", "a", "pb", "shared", "cat", "add", "fun", "inner"]
        assert list(f["model_weights"].attrs["layer_names"].astype(str)) == [l.name for l in m.layers]
        assert list(f["model_weights/inner"].attrs["weight_names"].astype(str))[0] == "inner/in1/kernel"
        tc = json.loads(f.attrs["training_config"])
        assert tc["loss_weights"] == {"fun": 1.0, "inner": 0.5}
    m2 = load_model(tmp_path / "f.h5")
    for a, b in zip(m.predict(x, verbose=0), m2.predict(x, verbose=0)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert m2.optimizer.iterations == 4
    assert m2.evaluate(x, y, verbose=0, return_dict=True).keys() == m.evaluate(x, y, verbose=0, return_dict=True).keys()
    straight, _, _ = trained(epochs=4)
    m2.fit(x, y, epochs=2, batch_size=4, shuffle=False, verbose=0)
    for a, b in zip(straight.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_keras2_inbound_nodes_form_by_hand():
    """The tf.keras 2 config form, nested lists with kwargs, and Keras 3's, give the same model."""
    m, x, _ = trained()
    k3 = m.get_config()
    k2 = json.loads(json.dumps(k3))
    for entry in k2["layers"]:
        for cfg_key in ("module", "registered_name", "build_config"):
            entry.pop(cfg_key, None)
        nodes = []
        for node in entry["inbound_nodes"]:
            args = node["args"][0]
            ts = args if isinstance(args, list) else [args]
            nodes.append([[*t["config"]["keras_history"], {}] for t in ts])
        entry["inbound_nodes"] = nodes
        if entry["class_name"] == "InputLayer":
            entry["config"]["batch_input_shape"] = entry["config"].pop("batch_shape")
    for spec in k2["output_layers"]:   # tf.keras 2 counts a nested Sequential's own first node
        if spec[0] == "inner":
            spec[1] = 1
    m2 = kilnet.Model.from_config(k2)
    m2.set_weights(m.get_weights())
    for a, b in zip(m.predict(x, verbose=0), m2.predict(x, verbose=0)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["tf2_functional", "tf2_lists", "tf2_seq"])
def test_reads_tf_keras2_files(name):
    """Real tf.keras 2.21 files: predictions, and one more training step from the restored
    optimizer state lands where tf.keras's did."""
    d = np.load(os.path.join(DATA, f"{name}.npz"))
    xs = [d[k] for k in sorted(k for k in d if k.startswith("x"))]
    ys = [d[k] for k in sorted(k for k in d if k.startswith("y"))]
    x = xs if len(xs) > 1 else xs[0]
    y = ys if len(ys) > 1 else ys[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # every training_config shape restores without a warning
        m = load_model(os.path.join(DATA, f"{name}.h5"))
    preds = m.predict(x, verbose=0)
    for i, p in enumerate(preds if isinstance(preds, list) else [preds]):
        np.testing.assert_allclose(p, d[f"pred{i}"], rtol=1e-5, atol=1e-6)
    assert m.optimizer.iterations == 4 and all(s.any() for s in m.optimizer.state.values())
    m.train_on_batch(x, y)
    for key, w in leaf_weights(m):
        np.testing.assert_allclose(w, d[f"after/{key}"], rtol=1e-4, atol=2e-5, err_msg=f"{name} {key}")


def test_tf_keras2_training_configs_restore():
    m = load_model(os.path.join(DATA, "tf2_functional.h5"))
    c = m.compiled
    assert set(c.loss_spec) == {"inner_fun", "inner_seq"} and c.loss_spec["inner_fun"] == "sparse_categorical_crossentropy"
    assert c.weight_spec == {"inner_fun": 1.0, "inner_seq": 0.5}
    names = set(m.evaluate(m_inputs(), m_targets(), verbose=0, return_dict=True))
    assert {"inner_fun_accuracy", "inner_fun_sca", "inner_seq_mae", "inner_fun_loss", "inner_seq_loss"} <= names
    lists = load_model(os.path.join(DATA, "tf2_lists.h5"))
    assert lists.compiled.weight_spec == [0.3, 0.7] and type(lists.optimizer).__name__ == "SGD"
    assert lists.optimizer.momentum == pytest.approx(0.9)


def m_inputs():
    d = np.load(os.path.join(DATA, "tf2_functional.npz"))
    return [d["x0"], d["x1"]]


def m_targets():
    d = np.load(os.path.join(DATA, "tf2_functional.npz"))
    return [d["y0"], d["y1"]]


def test_training_config_shapes_by_hand(tmp_path):
    """Shapes tf.keras 2 and Keras 3 write, on a saved file: names nested per output, metric
    objects, a loss dict with a serialized loss, a single loss for all outputs; an optimizer
    kilnet does not have leaves the model uncompiled with a warning."""
    m, x, y = trained()
    m.save(tmp_path / "f.h5")
    shapes = [
        {"loss": ["sparse_categorical_crossentropy", "mse"], "metrics": [["accuracy"], ["mae"]]},
        {"loss": ["sparse_categorical_crossentropy", {"class_name": "MeanSquaredError",
                                                      "config": {"reduction": "auto", "name": "mean_squared_error"}}],
         "metrics": [[{"class_name": "MeanMetricWrapper", "config": {"name": "fun_acc", "dtype": "float32",
                                                                       "fn": "sparse_categorical_accuracy"}}],
                     [{"class_name": "MeanAbsoluteError", "config": {"name": "inner_mean_absolute_error"}}]],
         "weighted_metrics": [["accuracy"], ["mse"]], "loss_weights": [1, 2]},
        {"loss": {"fun": "sparse_categorical_crossentropy", "inner": "mae"}, "metrics": {"fun": "accuracy"}},
    ]
    for shape in shapes:
        with h5py.File(tmp_path / "f.h5", "a") as f:
            tc = json.loads(f.attrs["training_config"])
            tc.pop("weighted_metrics", None)
            tc.pop("loss_weights", None)
            tc.update(shape)
            f.attrs["training_config"] = json.dumps(tc)
        m2 = load_model(tmp_path / "f.h5")
        logs = m2.evaluate(x, y, verbose=0, return_dict=True)
        assert np.isfinite(logs["loss"]), shape
    with h5py.File(tmp_path / "f.h5", "a") as f:
        tc = json.loads(f.attrs["training_config"])
        tc["optimizer_config"] = {"class_name": "Nadam", "config": {"learning_rate": 0.01}}
        f.attrs["training_config"] = json.dumps(tc)
    with pytest.warns(UserWarning, match="uncompiled"):
        m3 = load_model(tmp_path / "f.h5")
    assert m3.optimizer is None
    for a, b in zip(m.predict(x, verbose=0), m3.predict(x, verbose=0)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


KERAS_SCRIPT = r"""
import os, sys, numpy as np
os.environ["KERAS_BACKEND"] = "torch"
import keras
from keras import layers as L
mode, folder = sys.argv[1:3]
if mode == "read":
    d = np.load(f"{folder}/x.npz")
    m = keras.models.load_model(f"{folder}/kilnet.h5")
    p = m.predict([d["x0"], d["x1"]], verbose=0)
    np.savez(f"{folder}/keras_pred.npz", p0=p[0], p1=p[1], it=int(m.optimizer.iterations))
else:
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    shared = L.Dense(5, activation="tanh", name="shared")
    inner = keras.Sequential([keras.Input((5,)), L.Dense(4, activation="relu", name="in1"), L.Dense(3, name="in2")],
                             name="inner")
    ii = keras.Input((10,), name="ii")
    fun = keras.Model(ii, L.Dense(3, activation="softmax", name="fd")(L.Dense(6, name="fh")(ii)), name="fun")
    h1, h2 = shared(a), shared(L.Dense(4, name="pb")(b))
    m = keras.Model([a, b], [fun(L.Concatenate(name="cat")([h1, h2])), inner(L.Add(name="add")([h1, h2]))], name="fm")
    m.compile(optimizer="adam", loss={"fun": "sparse_categorical_crossentropy", "inner": "mse"},
              metrics={"fun": ["accuracy"], "inner": ["mae"]})
    x = [rng.uniform(size=(8, 4)).astype("f"), rng.uniform(size=(8, 3)).astype("f")]
    y = [np.arange(8) % 3, rng.uniform(size=(8, 3)).astype("f")]
    m.fit(x, y, epochs=2, batch_size=4, shuffle=False, verbose=0)
    m.save(f"{folder}/keras.h5")
    p = m.predict(x, verbose=0)
    m.train_on_batch(x, y)
    np.savez(f"{folder}/keras.npz", x0=x[0], x1=x[1], y0=y[0], y1=y[1], p0=p[0], p1=p[1],
             **{f"after/{v.path}": v.numpy() for v in m.trainable_variables})
"""


def run_keras(tmp_path, mode):
    (tmp_path / "k.py").write_text(KERAS_SCRIPT)
    r = subprocess.run([sys.executable, str(tmp_path / "k.py"), mode, str(tmp_path)], capture_output=True,
                       text=True, timeout=600, env={**os.environ, "KERAS_BACKEND": "torch"})
    assert r.returncode == 0, r.stderr[-4000:]


@needs_keras
def test_keras3_reads_kilnet_functional_h5(tmp_path):
    m, x, _ = trained()
    m.save(tmp_path / "kilnet.h5")
    np.savez(tmp_path / "x.npz", x0=x[0], x1=x[1])
    run_keras(tmp_path, "read")
    got = np.load(tmp_path / "keras_pred.npz")
    ours = m.predict(x, verbose=0)
    np.testing.assert_allclose(got["p0"], ours[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["p1"], ours[1], rtol=1e-5, atol=1e-6)
    assert int(got["it"]) == 4


@needs_keras
def test_kilnet_reads_keras3_functional_h5(tmp_path):
    run_keras(tmp_path, "write")
    d = np.load(tmp_path / "keras.npz")
    x, y = [d["x0"], d["x1"]], [d["y0"], d["y1"]]
    m = load_model(tmp_path / "keras.h5")
    p = m.predict(x, verbose=0)
    np.testing.assert_allclose(p[0], d["p0"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p[1], d["p1"], rtol=1e-5, atol=1e-6)
    assert [l.name for l in m.layers] == ["b", "a", "pb", "shared", "cat", "add", "fun", "inner"]
    m.train_on_batch(x, y)   # Adam's state came back from optimizer_weights
    for v in m.trainable_variables:
        key = next(k for k in d if k.startswith("after/") and k.endswith("/" + v.path))
        np.testing.assert_allclose(v.numpy(), d[key], rtol=1e-4, atol=2e-5, err_msg=v.path)


def test_refusals_name_the_problem(tmp_path):
    """Ops on symbolic tensors cannot be named in a file; a malformed graph config is refused."""
    a, b = kilnet.Input((3,), name="a"), kilnet.Input((3,), name="b")
    m = kilnet.Model([a, b], L.Dense(2, name="d")(a + b))
    with pytest.raises(ValueError, match="applies the op"):
        m.save(tmp_path / "op.keras")
    good, _, _ = trained(epochs=1)
    cfg = good.get_config()
    broken = json.loads(json.dumps(cfg))
    broken["layers"][2]["inbound_nodes"][0]["args"][0]["config"]["keras_history"] = ["nowhere", 0, 0]
    with pytest.raises(ValueError, match="'nowhere'"):
        kilnet.Model.from_config(broken)
    cyc = json.loads(json.dumps(cfg))
    pb = next(e for e in cyc["layers"] if e["name"] == "pb")
    pb["inbound_nodes"][0]["args"][0]["config"]["keras_history"] = ["shared", 1, 0]   # pb feeds itself via shared
    with pytest.raises(ValueError, match="cycle"):
        kilnet.Model.from_config(cyc)
