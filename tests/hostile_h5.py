"""A generator of hostile model files (issue 22), for tests/test_hardening_files.py.

`make_all(folder)` writes each file and returns [(name, path, regex of the expected
ModelFileError message)]. Three families:
  memory bombs   architectures that declare far more weights than the file stores, datasets
                 that declare more than they store (unwritten chunks, compression bombs);
  time bombs     configs of many cheap layers;
  invariants     optimizer state no optimizer can reach (negative second moments, a negative or
                 fractional iteration counter, a NaN learning rate, centered RMSprop's mean square
                 below its squared mean);
plus configs with odd values (infinite or non-integer sizes, geometry the kernels refuse).
Every file is small (well under 1 MB) and is built from a real model saved by kilnet, then
edited with h5py or zipfile."""
from __future__ import annotations

import json
import os
import zipfile

import h5py
import numpy as np


def _base(folder, name, optimizer="adam", model=None, suffix=".h5"):
    import kilnet
    from kilnet import layers
    m = model or kilnet.models.Sequential([layers.Dense(4, activation="relu", input_shape=(3,)), layers.Dense(2)])
    if optimizer is not None:
        m.compile(optimizer=optimizer, loss="mse")
        m.fit(np.ones((4, 3), np.float32), np.zeros((4, 2), np.float32), epochs=1, verbose=0)
    path = os.path.join(folder, name + suffix)
    m.save(path)
    return path


def _edit_config(path, edit):
    with h5py.File(path, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        edit(cfg)
        f.attrs["model_config"] = json.dumps(cfg)
    return path


def _edit_keras_config(path, edit):
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    cfg = json.loads(members["config.json"])
    edit(cfg)
    members["config.json"] = json.dumps(cfg).encode()
    with zipfile.ZipFile(path, "w") as z:
        for n, d in members.items():
            z.writestr(n, d)
    return path


def _layer(cfg, i):
    return [l for l in cfg["config"]["layers"] if l["class_name"] != "InputLayer"][i]["config"]


def _set_layer(i, **kv):
    def edit(cfg):
        _layer(cfg, i).update(kv)
    return edit


def _optimizer_slot(path, pick, value_fn):
    """Replace the optimizer dataset whose name `pick` selects with value_fn(old array)."""
    with h5py.File(path, "r+") as f:
        g = f["optimizer_weights"]
        names = [n.decode() for n in g.attrs["weight_names"]]
        name = next(n for n in names if pick(n))
        old = g[name][()]
        del g[name]
        g.create_dataset(name, data=value_fn(np.asarray(old)))
    return path


def _replace_weight(path, layer_index, build):
    """Replace the first weight dataset of model_weights' layer `layer_index` with build(group, name)."""
    with h5py.File(path, "r+") as f:
        mw = f["model_weights"]
        lname = [n.decode() for n in mw.attrs["layer_names"]][layer_index]
        g = mw[lname]
        wname = [n.decode() for n in g.attrs["weight_names"]][0]
        shape = g[wname].shape
        del g[wname]
        build(g, wname, shape)
    return path


def _many_layers(n):
    def edit(cfg):
        layers = cfg["config"]["layers"]
        for i in range(n):
            layers.append({"module": "keras.layers", "class_name": "Activation", "registered_name": None,
                           "config": {"name": f"act_{i}", "activation": "linear", "trainable": True}})
    return edit


def make_all(folder):
    import kilnet
    from kilnet import layers
    os.makedirs(folder, exist_ok=True)
    out = []

    def add(name, path, match):
        out.append((name, path, match))

    budget = "declares more weights than the file holds"
    # ------------------------------------------------------------------ memory bombs
    add("dense_units_3e7", _edit_config(_base(folder, "units3e7", None), _set_layer(0, units=3 * 10**7)), budget)
    add("dense_units_1e12", _edit_config(_base(folder, "units1e12", None), _set_layer(1, units=10**12)), budget)
    add("keras_dense_units_1e12", _edit_keras_config(_base(folder, "k_units", None, suffix=".keras"),
                                                     _set_layer(0, units=10**12)), budget)
    emb = kilnet.models.Sequential([layers.Embedding(10, 4, input_shape=(5,)), layers.Flatten(), layers.Dense(1)])
    add("embedding_input_dim_1e10", _edit_config(_base(folder, "emb", None, model=emb),
                                                 _set_layer(0, input_dim=10**10)), budget)
    add("unwritten_chunks", _replace_weight(
        _base(folder, "chunks", None), 0,
        lambda g, n, s: g.create_dataset(n, shape=(10**5, 10**5), dtype="f4", chunks=(1, 1024))),
        "claims|declares .* bytes but stores")
    add("unwritten_dataset_of_the_right_shape", _replace_weight(
        _base(folder, "fill", None), 0, lambda g, n, s: g.create_dataset(n, shape=s, dtype="f4", chunks=s)),
        "declares .* bytes but stores 0")
    add("compression_bomb", _replace_weight(
        _base(folder, "gzip", None), 0,
        lambda g, n, s: g.create_dataset(n, data=np.zeros((2**24,), np.float32), chunks=(2**20,),
                                         compression="gzip", compression_opts=9)),
        "declares .* bytes but stores")
    up = kilnet.models.Sequential([layers.UpSampling2D(2, interpolation="bilinear", input_shape=(4, 4, 1))])

    def big_bilinear(cfg):   # the interpolation matrix would be 4e7 x 4e4 values (no weights at all)
        for l in cfg["config"]["layers"]:
            if l["class_name"] == "InputLayer":
                l["config"]["batch_shape"] = [None, 40000, 1, 1]
        cfg["config"]["build_input_shape"] = [None, 40000, 1, 1]
        _layer(cfg, 0)["size"] = [1000, 1]
    add("bilinear_upsampling_matrix", _edit_config(_base(folder, "bilinear", None, model=up), big_bilinear),
        "interpolation matrix")
    # ------------------------------------------------------------------ time bombs
    add("15000_layers", _edit_config(_base(folder, "many", None), _many_layers(15000)), "more than 10000 layers")
    add("keras_15000_layers", _edit_keras_config(_base(folder, "k_many", None, suffix=".keras"), _many_layers(15000)),
        "more than 10000 layers")
    # ------------------------------------------------------------------ optimizer invariants
    add("adam_negative_second_moment", _optimizer_slot(
        _base(folder, "adam_v"), lambda n: n.endswith("_velocity"), lambda a: a - 1.0), "negative values")
    add("adam_nan_second_moment", _optimizer_slot(
        _base(folder, "adam_nan"), lambda n: n.endswith("_velocity"), lambda a: a * np.nan), "NaN")
    add("negative_iteration", _optimizer_slot(
        _base(folder, "it_neg"), lambda n: n.endswith("iteration"), lambda a: np.int64(-3)), "iteration")
    add("fractional_iteration", _optimizer_slot(
        _base(folder, "it_frac"), lambda n: n.endswith("iteration"), lambda a: np.float64(2.5)), "iteration")
    add("nan_learning_rate", _optimizer_slot(
        _base(folder, "lr_nan"), lambda n: n.endswith("learning_rate"), lambda a: np.float32(np.nan)),
        "learning rate|not finite")
    add("rmsprop_negative_velocity", _optimizer_slot(
        _base(folder, "rms", "rmsprop"), lambda n: n.endswith("_velocity"), lambda a: a - 1.0), "negative values")
    from kilnet.optimizers import Adagrad, RMSprop
    add("rmsprop_centered_mean_square_below_squared_mean", _optimizer_slot(
        _base(folder, "rms_c", RMSprop(centered=True)), lambda n: n.endswith("_average_gradient"),
        lambda a: a + 10.0), "squared average gradient")
    add("adagrad_negative_accumulator", _optimizer_slot(
        _base(folder, "adagrad", Adagrad()), lambda n: n.endswith("_accumulator"), lambda a: a - 1.0),
        "negative values")
    # ------------------------------------------------------------------ odd config values
    conv = kilnet.models.Sequential([layers.Conv2D(1, 2, padding="same", input_shape=(6, 6, 1))])
    add("conv_dilation_2_40", _edit_config(_base(folder, "dil40", None, model=conv),
                                           _set_layer(0, dilation_rate=[2**40, 2**40])), "dilation_rate")
    add("conv_dilation_padded_image", _edit_config(_base(folder, "dil25", None, model=conv),
                                                   _set_layer(0, dilation_rate=[2**25, 2**25])), "padded image")
    add("units_infinite", _edit_config(_base(folder, "inf", None), _set_layer(0, units=float("inf"))),
        "units|OverflowError|cannot")
    add("units_a_dict", _edit_config(_base(folder, "dict", None), _set_layer(0, units={"a": 1})), "units")
    add("kernel_size_1e300", _edit_config(_base(folder, "ks", None, model=conv), _set_layer(0, kernel_size=[1e300, 1])),
        "kernel_size")
    return out
