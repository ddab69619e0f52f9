"""Save and load models as legacy HDF5 (.h5) in the layout Keras writes (see shared/KERAS_H5.md
and docs/saving.md); the .keras archive is keras_archive.py beside it. Public as kilnet.io.

  attrs: model_config (JSON), training_config (JSON, compiled models), keras_version, kilnet_version
  model_weights/<layer>/<weight path>        the weights (Keras 3 names), per layer of model.layers
  optimizer_weights/<opt>/...                 iteration, learning rate, slots in Keras's order

Sequential and functional models (multi-input/output, shared layers, nested models) are
written; a subclassed model is refused (as Keras 3 does for .h5). Files from Keras 3 and from
tf.keras 2 (functional "inbound_nodes" as nested lists, every training_config shape) load.
Nothing in a file is ever executed: the architecture is JSON naming registered layer classes,
whose arguments are validated by the constructors. Datasets are read only when they are plain
data in the file itself and their shapes agree with the architecture (saving/h5_checks.py).
Saving is atomic (saving/atomic.py). h5py is imported only when a model is saved or loaded.
"""
from __future__ import annotations

import json
import os
import warnings

import numpy as np

from kilnet import serialization
from kilnet.saving import h5_checks
from kilnet.saving.atomic import atomic_path
from kilnet.saving.compile_config import compile_config, restore_compile
from kilnet.saving.errors import ModelFileError
from kilnet.saving.h5_checks import MAX_WEIGHT_ELEMENTS  # noqa: F401  (kept importable from here)
from kilnet.saving.model_config import model_from_entry
from kilnet.saving.optimizer_state import optimizer_values, restore_optimizer
from kilnet.weight_budget import weight_budget

__all__ = ["save_model", "load_model", "model_from_config", "read_legacy_weights", "ModelFileError"]

LAYOUT_KERAS_VERSION = "3.15.1"    # the Keras .h5 layout we follow


def _structured(model):
    return type(model).__name__ in ("Sequential", "Functional") and hasattr(type(model), "_keras_module")


# ---------------------------------------------------------------------------------- save
def save_model(model, filepath, overwrite=True, include_optimizer=True, weights_only=False) -> None:
    """The whole model (architecture, weights, optimizer state) or, with weights_only, the
    weights alone (any model: save_weights)."""
    h5py = h5_checks.h5py()
    from kilnet import __version__
    path = os.fspath(filepath)
    if not weights_only and not _structured(model):
        raise NotImplementedError(f"save: a subclassed model ({type(model).__name__}) cannot be written to a "
                                  "legacy .h5 file (as in Keras 3): register the class with "
                                  "@kilnet.saving.register_keras_serializable() and save to .keras, or save "
                                  "the weights with model.save_weights('x.weights.h5')")
    if not model.built:
        raise ValueError("save: the model is not built yet (give input_shape= or call fit/build first)")
    model_config = None if weights_only else json.dumps({"class_name": type(model).__name__,
                                                          "config": model.get_config()})
    with atomic_path(path, overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            if model_config is not None:
                f.attrs["model_config"] = model_config
            f.attrs["keras_version"] = LAYOUT_KERAS_VERSION
            f.attrs["kilnet_version"] = __version__
            f.attrs["backend"] = "kilnet"
            with_opt = not weights_only and include_optimizer and model.optimizer is not None
            if with_opt and model.compiled is not None:
                tcfg = compile_config(model, optimizer_key="optimizer_config")
                tcfg["loss"] = _nested_loss_objects(tcfg["loss"])
                f.attrs["training_config"] = json.dumps(tcfg)
            _write_weights(f.create_group("model_weights"), model)
            if with_opt and model.optimizer.state:
                _write_optimizer(f.create_group("optimizer_weights"), model)


def _nested_loss_objects(spec):
    """Loss names inside a list or dict written as loss objects: Keras 3's legacy .h5 loader
    cannot read names there (it fails on its own files), objects it reads."""
    if not isinstance(spec, (list, dict)):
        return spec
    from kilnet import losses

    def obj(v):
        return losses.serialize(losses.get(v)) if isinstance(v, str) else v
    return {k: obj(v) for k, v in spec.items()} if isinstance(spec, dict) else [obj(v) for v in spec]


def _host(a):
    """A weight or state array as float32 numpy, wherever it lives (GPU arrays are copied)."""
    return np.asarray(a if isinstance(a, np.ndarray) else a.get(), np.float32)


def _weight_path(layer, var):
    """A weight's (Variable's) path inside its layer as Keras names it: <layer>/<weight>, or
    <layer>/<scope>/<weight> for layers whose weights live in a sub-layer (an RNN's cell, the
    layer TimeDistributed wraps), which say so with `keras_weight_scope`; a layer with weights
    in several sub-layers (Bidirectional) names each with `keras_weight_path(var)`."""
    per_weight = getattr(layer, "keras_weight_path", None)
    if per_weight is not None:
        return f"{layer.name}/{per_weight(var)}"
    scope = getattr(layer, "keras_weight_scope", None)
    return f"{layer.name}/{scope}/{var.name}" if scope else f"{layer.name}/{var.name}"


def _variable_names(model):
    """{id(variable): its Keras 3 path}: "<model>/<layer>/<weight>" in a Sequential,
    "<layer>/<weight>" in a functional model, "<nested model>/<layer>/<weight>" below."""
    out = {}

    def walk(container, prefix):
        for layer in container.layers:
            if getattr(layer, "_is_model_class", False):
                walk(layer, f"{prefix}{layer.name}/")
            else:
                for v in layer.variables:
                    out.setdefault(id(v), prefix + _weight_path(layer, v))
    walk(model, f"{model.name}/" if type(model).__name__ == "Sequential" or not _structured(model) else "")
    return out


def _write_weights(g, model):
    layers = model.layers
    g.attrs["layer_names"] = np.array([l.name.encode() for l in layers])
    g.attrs["backend"] = "kilnet"
    g.attrs["keras_version"] = LAYOUT_KERAS_VERSION
    paths = _variable_names(model)
    for layer in layers:
        lg = g.create_group(layer.name)
        variables = layer.variables
        names = [paths.get(id(v), _weight_path(layer, v)) for v in variables]
        if getattr(layer, "_is_model_class", False):   # a nested model: Keras drops the outer prefix
            names = [n.split("/", 1)[1] if n.startswith(f"{model.name}/") else n for n in names]
        lg.attrs["weight_names"] = np.array([n.encode() for n in names], dtype="S")
        for n, v in zip(names, variables):
            lg.create_dataset(n, data=_host(v.value))
    top = g.create_group("top_level_model_weights")
    top.attrs["weight_names"] = np.array([], dtype="S")


def _write_optimizer(g, model):
    paths = _variable_names(model)
    names = []
    for full, value in optimizer_values(model, lambda v: paths.get(id(v), v.name), qualified=True):
        g.create_dataset(full, data=value)
        names.append(full)
    g.attrs["weight_names"] = np.array([n.encode() for n in names], dtype="S")


# ---------------------------------------------------------------------------------- load
def load_model(filepath, compile=True, allow_nonfinite=False, custom_objects=None):
    h5py = h5_checks.h5py()
    path = os.fspath(filepath)
    where = f"load_model: {path}"
    if not os.path.exists(path):
        raise FileNotFoundError(f"load_model: no such file: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ModelFileError(f"{where} is not a readable HDF5 file (truncated or corrupt?): {e}") from None
    with f, serialization.custom_objects_scope(custom_objects):
        try:
            cfg = _json_attr(f, "model_config", where)
            if cfg is None:
                raise ModelFileError(f"{where} has no 'model_config' attribute: it holds no "
                                     "architecture (weights only?); build the model and call load_weights")
            # The weights the file really stores bound what building the architecture may allocate
            # (kilnet/weight_budget.py): checked before any layer allocates, so a small file cannot
            # declare a huge model.
            wg = h5_checks.hard_group(f, "model_weights", where) if "model_weights" in f else f
            with weight_budget(h5_checks.stored_elements(wg, where), where):
                model = model_from_config(cfg, where)
            read_legacy_weights(f, model, where, allow_nonfinite)
            tcfg = _json_attr(f, "training_config", where) if compile else None
            if tcfg is not None and restore_compile(model, tcfg, where) and "optimizer_weights" in f:
                _read_optimizer(h5_checks.hard_group(f, "optimizer_weights", where), model, where, allow_nonfinite)
        except (KeyError, OSError, RuntimeError) as e:   # h5py's errors on damaged structures
            raise ModelFileError(f"{where} is damaged or incomplete: {e}") from None
        except (OverflowError, TypeError, RecursionError) as e:   # odd values in the config
            raise ModelFileError(f"{where}: the file holds values kilnet cannot use: {type(e).__name__}: {e}") from None
        except MemoryError:   # a structure the weight budget does not cover, too big for this machine
            raise ModelFileError(f"{where}: the model the file describes does not fit in memory") from None
    return model


def _json_attr(f, key, where):
    if key not in f.attrs:
        return None
    raw = f.attrs[key]
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if not isinstance(raw, str) or len(raw) > 16 << 20:
        raise ModelFileError(f"{where}: attribute {key!r} is not a JSON string")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ModelFileError(f"{where}: attribute {key!r} is not valid JSON ({e})") from None


def model_from_config(cfg, where="load_model"):
    """A model from its JSON config {"class_name", "config"}: a registered model type
    (Sequential, Functional/Model, registered user classes), whose from_config checks the
    layers; built without drawing initial values (the weights come next)."""
    return model_from_entry(cfg, where, initialize=False)


def _names_attr(g):
    raw = g.attrs.get("weight_names", g.attrs.get("layer_names"))
    if raw is None:
        return []
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in np.asarray(raw).reshape(-1)]


def read_legacy_weights(f, model, where, allow_nonfinite=False, by_name=False, skip_mismatch=False):
    """Weights in the legacy layout (model_weights/<layer> with weight_names) into the model's
    layers with weights, in order (Keras's rule), or by layer name with by_name=True.
    skip_mismatch: a layer whose weights disagree in number or shape is skipped with a warning."""
    g = h5_checks.hard_group(f, "model_weights", where) if "model_weights" in f else f
    layer_names = [n.decode() if isinstance(n, bytes) else str(n)
                   for n in np.asarray(g.attrs.get("layer_names", [])).reshape(-1)]
    file_layers = [n for n in layer_names if n in g and _names_attr(h5_checks.hard_group(g, n, where))]
    if by_name:
        by = {l.name: l for l in model.layers}
        pairs = [(by[n], n) for n in file_layers if n in by]
    else:
        with_weights = [l for l in model.layers if l.variables]
        if len(file_layers) != len(with_weights) and not skip_mismatch:
            raise ModelFileError(f"{where} holds weights for {len(file_layers)} layers, the architecture "
                                 f"has {len(with_weights)} layers with weights")
        pairs = list(zip(with_weights, file_layers))
    for layer, lname in pairs:
        lg = h5_checks.hard_group(g, lname, where)
        names = _names_attr(lg)
        variables = layer.variables
        try:
            if len(names) != len(variables):
                raise ModelFileError(f"{where}: layer {lname!r} has {len(names)} weights, "
                                     f"{layer.name!r} needs {len(variables)}")
            values = [h5_checks.read_dataset(lg, n, v.shape, where, allow_nonfinite) for n, v in zip(names, variables)]
        except ModelFileError as e:
            if not skip_mismatch:
                raise
            warnings.warn(f"skipping layer {layer.name!r}: {e}", stacklevel=3)
            continue
        layer.set_weights(values, allow_nonfinite=allow_nonfinite)


def _read_optimizer(g, model, where, allow_nonfinite):
    """The optimizer's variables by position in weight_names (Keras 3: <opt>/iteration,
    <opt>/learning_rate, slots; tf.keras 2: iteration:0, <Opt>/m/<weight>:0, ...)."""
    names = _names_attr(g)
    if not names:
        return
    values = [h5_checks.read_dataset(g, n, None, where, allow_nonfinite) for n in names]
    restore_optimizer(model, values, where)
