"""Model files shared with Keras: kilnet reads .h5 files saved by Keras 3 (and the Keras 2
layout), and Keras 3 loads the files kilnet writes, with the same predictions."""
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from kilnet.models import load_model

HAVE_KERAS = subprocess.run([sys.executable, "-c", "import keras"], capture_output=True,
                            env={**os.environ, "KERAS_BACKEND": "torch"}).returncode == 0
needs_keras = pytest.mark.skipif(not HAVE_KERAS, reason="keras (3, torch backend) not installed")

KERAS_SCRIPT = r"""
import os, sys, numpy as np
os.environ["KERAS_BACKEND"] = "torch"
import keras
from keras import layers as L
mode, path, xpath, ppath = sys.argv[1:5]
x = np.load(xpath)
if mode == "write":
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input(x.shape[1:]),
                          L.ZeroPadding2D(((1, 0), (0, 1))),
                          L.Conv2D(4, (3, 2), strides=(2, 1), padding="same", activation="relu"),
                          L.BatchNormalization(),
                          L.Conv2D(3, 3, dilation_rate=2, activation="tanh"),
                          L.MaxPooling2D(2, padding="same"), L.Dropout(0.3),
                          L.AveragePooling2D(1), L.Reshape((-1,)),
                          L.Dense(6, activation="sigmoid"), L.Activation("relu"),
                          L.Dense(3), L.Activation("softmax")])
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    m.fit(x, np.arange(len(x)) % 3, epochs=1, verbose=0)
    m.save(path)
    keras.Sequential([keras.Input((6, 4)), L.GRU(5, return_sequences=True), L.LSTM(4), L.Dense(2)]).save(path + ".rnn.h5")
    keras.Sequential([keras.Input((9, 8, 2)), L.Conv2D(3, 3), L.GlobalAveragePooling2D(), L.Dense(2)]).save(path + ".gap.h5")
    np.save(ppath, m.predict(x, verbose=0))
else:
    m = keras.models.load_model(path)
    np.save(ppath, m.predict(x, verbose=0))
    print("iterations", int(m.optimizer.iterations))
"""


def run_keras(tmp_path, mode, path, x):
    script = tmp_path / "k.py"
    script.write_text(KERAS_SCRIPT)
    np.save(tmp_path / "x.npy", x)
    r = subprocess.run([sys.executable, str(script), mode, str(path), str(tmp_path / "x.npy"),
                        str(tmp_path / "p.npy")], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "KERAS_BACKEND": "torch"})
    assert r.returncode == 0, r.stderr[-3000:]
    return np.load(tmp_path / "p.npy"), r.stdout


@needs_keras
def test_reads_keras3_file(tmp_path):
    x = np.random.default_rng(0).uniform(size=(16, 9, 8, 2)).astype(np.float32)
    path = tmp_path / "keras.h5"
    expected, _ = run_keras(tmp_path, "write", path, x)
    m = load_model(path)
    np.testing.assert_allclose(m.predict(x), expected, rtol=1e-5, atol=1e-6)
    assert m.optimizer.iterations == 1 and m.optimizer.state["m"].any()
    m.fit(x, np.arange(16) % 3, verbose=0)     # and it trains on
    assert [type(l).__name__ for l in load_model(str(path) + ".rnn.h5").layers] == ["GRU", "LSTM", "Dense"]
    assert load_model(str(path) + ".gap.h5").predict(x).shape == (16, 2)


@needs_keras
def test_keras_reads_kilnet_file(tmp_path):
    from kilnet.layers import Activation, Conv2D, Dense, Flatten
    from kilnet.models import Sequential
    from kilnet.utils import set_random_seed
    set_random_seed(0)
    m = Sequential([Conv2D(4, 3, padding="same", activation="relu", input_shape=(9, 8, 2)), Flatten(),
                    Dense(5, activation="tanh"), Dense(3), Activation("softmax")])
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x = np.random.default_rng(1).uniform(size=(12, 9, 8, 2)).astype(np.float32)
    m.fit(x, np.arange(12) % 3, epochs=2, batch_size=4, verbose=0)
    path = tmp_path / "kilnet.h5"
    m.save(path)
    got, out = run_keras(tmp_path, "read", path, x)
    np.testing.assert_allclose(got, m.predict(x), rtol=1e-5, atol=1e-6)
    assert "iterations 6" in out


def test_reads_keras2_layout(tmp_path):
    """The tf.keras 2 layout (written by hand here, as read off real files in KERAS_H5.md):
    batch_input_shape on the first layer, 'name:0' weight names, Custom>Adam optimizer."""
    rng = np.random.default_rng(0)
    k1, b1 = rng.normal(size=(3, 3, 1, 2)).astype(np.float32), rng.normal(size=2).astype(np.float32)
    k2, b2 = rng.normal(size=(72, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    cfg = {"class_name": "Sequential", "config": {"name": "sequential", "layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 8, 8, 1], "dtype": "float32",
                                                "sparse": False, "ragged": False, "name": "conv2d_input"}},
        {"class_name": "Conv2D", "config": {"name": "conv2d", "trainable": True, "dtype": "float32",
                                            "batch_input_shape": [None, 8, 8, 1], "filters": 2,
                                            "kernel_size": [3, 3], "strides": [1, 1], "padding": "valid",
                                            "data_format": "channels_last", "dilation_rate": [1, 1],
                                            "groups": 1, "activation": "relu", "use_bias": True,
                                            "kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": None}},
                                            "bias_initializer": {"class_name": "Zeros", "config": {}},
                                            "kernel_regularizer": None, "bias_regularizer": None,
                                            "activity_regularizer": None, "kernel_constraint": None,
                                            "bias_constraint": None}},
        {"class_name": "Flatten", "config": {"name": "flatten", "trainable": True, "dtype": "float32",
                                             "data_format": "channels_last"}},
        {"class_name": "Dense", "config": {"name": "dense", "trainable": True, "dtype": "float32", "units": 4,
                                           "activation": "softmax", "use_bias": True,
                                           "kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": None}},
                                           "bias_initializer": {"class_name": "Zeros", "config": {}},
                                           "kernel_regularizer": None, "bias_regularizer": None,
                                           "activity_regularizer": None, "kernel_constraint": None,
                                           "bias_constraint": None}}]}}
    path = tmp_path / "k2.h5"
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(cfg)
        f.attrs["keras_version"] = "2.21.0"
        f.attrs["backend"] = "tensorflow"
        f.attrs["training_config"] = json.dumps({
            "loss": "sparse_categorical_crossentropy", "metrics": [["accuracy"]],
            "optimizer_config": {"class_name": "Custom>Adam", "config": {
                "name": "Adam", "learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-07,
                "amsgrad": False, "weight_decay": None, "clipnorm": None, "global_clipnorm": None,
                "clipvalue": None, "use_ema": False, "ema_momentum": 0.99, "ema_overwrite_frequency": None,
                "jit_compile": True, "is_legacy_optimizer": False}}})
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = [b"conv2d", b"flatten", b"dense"]
        for lname, ws in (("conv2d", [("kernel", k1), ("bias", b1)]), ("flatten", []), ("dense", [("kernel", k2), ("bias", b2)])):
            g = mw.create_group(lname)
            g.attrs["weight_names"] = np.array([f"{lname}/{n}:0".encode() for n, _ in ws], dtype="S")
            for n, w in ws:
                g.create_dataset(f"{lname}/{n}:0", data=w)
    m = load_model(path)
    x = rng.uniform(size=(3, 8, 8, 1)).astype(np.float32)
    conv = np.zeros((3, 6, 6, 2))
    for i in range(6):
        for j in range(6):
            conv[:, i, j] = np.einsum("nrsc,rsck->nk", x[:, i:i + 3, j:j + 3], k1) + b1
    z = np.maximum(conv, 0).reshape(3, -1) @ k2 + b2
    ref = np.exp(z - z.max(1, keepdims=True))
    ref /= ref.sum(1, keepdims=True)
    np.testing.assert_allclose(m.predict(x), ref, rtol=1e-4, atol=1e-6)
    assert type(m.optimizer).__name__ == "Adam" and m.compiled_metrics[0].name == "accuracy"


def test_unsupported_keras_layer_is_named(tmp_path):
    cfg = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"batch_shape": [None, 4]}},
        {"class_name": "RandomRotation", "config": {"name": "rr", "factor": 0.1}}]}}
    path = tmp_path / "u.h5"
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(cfg)
    with pytest.raises(ValueError, match="unsupported layer type 'RandomRotation'"):
        load_model(path)
