"""Save and load models as HDF5 in the layout Keras writes (see shared/KERAS_H5.md).

  attrs: model_config (JSON), training_config (JSON, compiled models), keras_version, kilnet_version
  model_weights/<layer>/<model>/<layer>/<weight>           the weights (Keras 3 names)
  optimizer_weights/...                                     iteration and per-weight state

Nothing in a file is ever executed: the architecture is JSON naming registered layer classes,
whose arguments are validated by the constructors. Datasets are read only when they are plain
contiguous/chunked data in the file itself (no external storage, no virtual datasets, no soft or
external links) and their shapes agree with the architecture. Saving writes a temporary file
in the same folder, fsyncs it and renames it over the target, so a crash never leaves half a
file behind. h5py is imported here only, when a model is saved or loaded.
"""
from __future__ import annotations

import json
import math
import os
import tempfile

import numpy as np

from kilnet import serialization

__all__ = ["save_model", "load_model", "model_from_config", "load_weights_into"]

LAYOUT_KERAS_VERSION = "3.15.1"    # the Keras .h5 layout we follow
MAX_WEIGHT_ELEMENTS = 1 << 31      # a single weight larger than this is refused as absurd


class ModelFileError(ValueError):
    """A model file that is missing parts, corrupt, or asks for something kilnet refuses."""


def _h5py():
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - h5py is a dependency
        raise ImportError("saving and loading models needs h5py: pip install h5py") from e
    return h5py


# ---------------------------------------------------------------------------------- save
def save_model(model, filepath, overwrite=True, include_optimizer=True, weights_only=False) -> None:
    """The whole model (architecture, weights, optimizer state) or, with weights_only, the
    weights alone (any model: save_weights)."""
    h5py = _h5py()
    from kilnet import __version__, losses, optimizers
    path = os.fspath(filepath)
    class_name = type(model).__name__
    if not weights_only and not any(c.__name__ == "Sequential" for c in type(model).__mro__):
        raise NotImplementedError(f"save: kilnet writes the architecture of Sequential models only; this is a "
                                  f"{class_name} model. Save its weights with model.save_weights(path) and "
                                  "rebuild it in code (functional .h5/.keras files: issue 18)")
    if not model.built:
        raise ValueError("save: the model is not built yet (give input_shape= or call fit/build first)")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"save: {path} exists and overwrite=False")
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            if not weights_only:
                f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": model.get_config()})
            f.attrs["keras_version"] = LAYOUT_KERAS_VERSION
            f.attrs["kilnet_version"] = __version__
            f.attrs["backend"] = "kilnet"
            if not weights_only and include_optimizer and model.optimizer is not None and model.loss is not None:
                cc = model.get_compile_config()
                loss_id = cc["loss"]
                f.attrs["training_config"] = json.dumps({   # the keys Keras 3 writes and reads back
                    "loss": loss_id if isinstance(loss_id, str) else losses.serialize(model.loss),
                    "loss_weights": None,
                    "metrics": [m if isinstance(m, str) else m.name for m in cc["metrics"]],
                    "weighted_metrics": None, "run_eagerly": False, "steps_per_execution": 1,
                    "jit_compile": False,
                    "optimizer_config": optimizers.serialize(model.optimizer)})
            _write_weights(f.create_group("model_weights"), model)
            if not weights_only and include_optimizer and model.optimizer is not None and model.optimizer.state:
                _write_optimizer(f.create_group("optimizer_weights"), model)
        with open(tmp, "rb+") as fh:   # the bytes are on disk before the rename makes them visible
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _host(a):
    """A weight or state array as float32 numpy, wherever it lives (GPU arrays are copied)."""
    return np.asarray(a if isinstance(a, np.ndarray) else a.get(), np.float32)


def _write_weights(g, model):
    g.attrs["layer_names"] = np.array([l.name.encode() for l in model.layers])
    g.attrs["backend"] = "kilnet"
    g.attrs["keras_version"] = LAYOUT_KERAS_VERSION
    for layer in model.layers:
        lg = g.create_group(layer.name)
        variables = layer.variables
        names = [f"{model.name}/{_weight_path(layer, v)}" for v in variables]
        lg.attrs["weight_names"] = np.array([n.encode() for n in names], dtype="S")
        for n, v in zip(names, variables):
            lg.create_dataset(n, data=_host(v.value))
    top = g.create_group("top_level_model_weights")
    top.attrs["weight_names"] = np.array([], dtype="S")


# Optimizer state, named as Keras 3 names its variables: <opt>/iteration, <opt>/learning_rate,
# then per weight and slot <opt>/<model>_<layer>_<weight>_<slot> (Adam: momentum, velocity).
_KERAS_SLOT = {"m": "momentum", "v": "velocity"}


def _slot_name(opt, model, layer, var, slot):
    path = _weight_path(layer, var).replace("/", "_")
    return f"{opt.name}/{model.name}_{path}_{_KERAS_SLOT.get(slot, slot)}"


def _weight_path(layer, var):
    """A weight's (Variable's) path inside the model as Keras names it: <layer>/<weight>, or
    <layer>/<scope>/<weight> for layers whose weights live in a sub-layer (an RNN's cell, the
    layer TimeDistributed wraps), which say so with `keras_weight_scope`; a layer with weights
    in several sub-layers (Bidirectional) names each with `keras_weight_path(var)`."""
    per_weight = getattr(layer, "keras_weight_path", None)
    if per_weight is not None:
        return f"{layer.name}/{per_weight(var)}"
    scope = getattr(layer, "keras_weight_scope", None)
    return f"{layer.name}/{scope}/{var.name}" if scope else f"{layer.name}/{var.name}"


def _named_slices(model):
    """(model layer, Variable, offset, size, shape) of each trainable Variable in the optimizer's
    flat state, which follows model.trainable_variables; a weight is named under the model
    layer that holds it (a TimeDistributed wrapper rather than the layer it wraps)."""
    top = {}
    for layer in model.layers:
        for v in layer.variables:
            top.setdefault(id(v), layer)
    out, off = [], 0
    for v in model.trainable_variables:
        size = math.prod(v.shape)
        out.append((top[id(v)], v, off, size, tuple(v.shape)))
        off += size
    return out


def _write_optimizer(g, model):
    opt = model.optimizer
    names = [f"{opt.name}/iteration", f"{opt.name}/learning_rate"]
    g.create_dataset(names[0], data=np.int64(opt.iterations))
    lr = opt.learning_rate(opt.iterations) if callable(opt.learning_rate) else opt.learning_rate
    g.create_dataset(names[1], data=np.float32(lr))
    for layer, var, off, size, shape in _named_slices(model):
        for slot, flat in opt.state.items():
            name = _slot_name(opt, model, layer, var, slot)
            g.create_dataset(name, data=_host(flat[off:off + size]).reshape(shape))
            names.append(name)
    g.attrs["weight_names"] = np.array([n.encode() for n in names], dtype="S")


# ---------------------------------------------------------------------------------- load
def load_model(filepath, compile=True, allow_nonfinite=False):
    h5py = _h5py()
    path = os.fspath(filepath)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load_model: no such file: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ModelFileError(f"load_model: {path} is not a readable HDF5 file (truncated or corrupt?): {e}") from None
    with f:
        try:
            cfg = _json_attr(f, "model_config", path)
            if cfg is None:
                raise ModelFileError(f"load_model: {path} has no 'model_config' attribute: it holds no "
                                     "architecture (weights only?); build the model and call load_weights")
            model = model_from_config(cfg)
            _read_weights(f, model, path, allow_nonfinite)
            tcfg = _json_attr(f, "training_config", path) if compile else None
            if tcfg is not None:
                _compile_from(model, tcfg, path)
                if "optimizer_weights" in f:
                    _read_optimizer(_hard_group(f, "optimizer_weights", path), model, path, allow_nonfinite)
        except (KeyError, OSError, RuntimeError) as e:   # h5py's errors on damaged structures
            raise ModelFileError(f"load_model: {path} is damaged or incomplete: {e}") from None
    return model


def load_weights_into(model, filepath, allow_nonfinite=False):
    h5py = _h5py()
    path = os.fspath(filepath)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load_weights: no such file: {path}")
    if not model.built:
        model.build()
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ModelFileError(f"load_weights: {path} is not a readable HDF5 file: {e}") from None
    with f:
        _read_weights(f, model, path, allow_nonfinite)


def _json_attr(f, key, path):
    if key not in f.attrs:
        return None
    raw = f.attrs[key]
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if not isinstance(raw, str) or len(raw) > 16 << 20:
        raise ModelFileError(f"load_model: {path}: attribute {key!r} is not a JSON string")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise ModelFileError(f"load_model: {path}: attribute {key!r} is not valid JSON ({e})") from None


def model_from_config(cfg):
    """A model from its JSON config {"class_name", "config"}: the class must be a registered
    model type (kilnet.models registers Sequential), whose from_config checks the layers."""
    if not isinstance(cfg, dict):
        raise ModelFileError(f"load_model: model_config is a {type(cfg).__name__}, not an object")
    try:
        cls = serialization.get_class(cfg.get("class_name"), "model")
        if not getattr(cls, "_is_model_class", False):
            raise ValueError("")
    except ValueError:
        if cfg.get("class_name") == "Sequential":   # kilnet.models registers it on import
            raise ModelFileError("load_model: Sequential is not registered; load through "
                                 "kilnet.models.load_model") from None
        raise ModelFileError(f"load_model: only Sequential models are supported, the file holds "
                             f"{cfg.get('class_name')!r}") from None
    try:
        return cls.from_config(cfg.get("config"), initialize=False)
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"load_model: {e}") from None


def _hard_group(parent, name, path):
    h5py = _h5py()
    link = parent.get(name, getlink=True)
    if link is None:
        raise ModelFileError(f"load_model: {path}: missing group {name!r}")
    if not isinstance(link, h5py.HardLink):
        raise ModelFileError(f"load_model: {path}: {name!r} is a {type(link).__name__}; links are refused")
    g = parent[name]
    if not isinstance(g, h5py.Group):
        raise ModelFileError(f"load_model: {path}: {name!r} is not a group")
    return g


def _read_dataset(group, name, shape, path, allow_nonfinite):
    """Read one weight, refusing links, external or virtual storage and shape mismatches."""
    h5py = _h5py()
    parts = name.split("/")
    g = group
    for p in parts[:-1]:
        g = _hard_group(g, p, path)
    link = g.get(parts[-1], getlink=True)
    if link is None:
        raise ModelFileError(f"load_model: {path}: weight {name!r} is missing")
    if not isinstance(link, h5py.HardLink):
        raise ModelFileError(f"load_model: {path}: weight {name!r} is a {type(link).__name__}; links are refused")
    ds = g[parts[-1]]
    if not isinstance(ds, h5py.Dataset):
        raise ModelFileError(f"load_model: {path}: {name!r} is not a dataset")
    if ds.external or ds.is_virtual:
        raise ModelFileError(f"load_model: {path}: weight {name!r} uses external or virtual storage; refused")
    if math.prod(ds.shape or ()) > MAX_WEIGHT_ELEMENTS:
        raise ModelFileError(f"load_model: {path}: weight {name!r} claims {math.prod(ds.shape)} elements; refused")
    if tuple(ds.shape) != tuple(shape):
        raise ModelFileError(f"load_model: {path}: weight {name!r} has shape {tuple(ds.shape)}, "
                             f"the architecture needs {tuple(shape)}")
    if ds.dtype.kind not in "fiu":
        raise ModelFileError(f"load_model: {path}: weight {name!r} has non-numeric dtype {ds.dtype}")
    if shape == ():   # a counter (the optimizer's iteration): keep it an exact integer
        value = ds[()]
        if ds.dtype.kind == "f" and not np.isfinite(value):
            raise ModelFileError(f"load_model: {path}: {name!r} is not finite")
        return value
    value = np.asarray(ds[()], dtype=np.float32)
    if not allow_nonfinite and not np.isfinite(value).all():
        raise ModelFileError(f"load_model: {path}: weight {name!r} contains NaN or Inf "
                             "(pass allow_nonfinite=True to load it anyway)")
    return value


def _names_attr(g, path):
    raw = g.attrs.get("weight_names", g.attrs.get("layer_names"))
    if raw is None:
        return []
    out = []
    for n in np.asarray(raw).reshape(-1):
        n = n.decode("utf-8") if isinstance(n, bytes) else str(n)
        out.append(n)
    return out


def _read_weights(f, model, path, allow_nonfinite):
    g = _hard_group(f, "model_weights", path) if "model_weights" in f else f
    layer_names = [n.decode() if isinstance(n, bytes) else str(n)
                   for n in np.asarray(g.attrs.get("layer_names", [])).reshape(-1)]
    with_weights = [l for l in model.layers if l.variables]
    file_layers = [n for n in layer_names if n in g and _names_attr(g[n], path)]
    if len(file_layers) != len(with_weights):
        raise ModelFileError(f"load_model: {path} holds weights for {len(file_layers)} layers, the "
                             f"architecture has {len(with_weights)} layers with weights")
    for layer, lname in zip(with_weights, file_layers):
        lg = _hard_group(g, lname, path)
        names = _names_attr(lg, path)
        variables = layer.variables
        if len(names) != len(variables):
            raise ModelFileError(f"load_model: {path}: layer {lname!r} has {len(names)} weights, "
                                 f"{layer.name!r} needs {len(variables)}")
        values = [_read_dataset(lg, n, v.shape, path, allow_nonfinite) for n, v in zip(names, variables)]
        layer.set_weights(values)


def _compile_from(model, tcfg, path):
    if not isinstance(tcfg, dict):
        raise ModelFileError(f"load_model: {path}: training_config is not a JSON object")
    loss = tcfg.get("loss")
    opt = tcfg.get("optimizer_config")
    metrics = tcfg.get("metrics") or []
    if isinstance(metrics, list) and metrics and isinstance(metrics[0], list):   # Keras 2 nests them
        metrics = metrics[0]
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise ModelFileError(f"load_model: {path}: training_config metrics must be names")
    try:
        model.compile(optimizer=opt, loss=loss, metrics=metrics)
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"load_model: {path}: cannot restore the training configuration: {e}") from None


def _read_optimizer(g, model, path, allow_nonfinite):
    opt = model.optimizer
    if f"{opt.name}/iteration" not in g:   # no state for this optimizer (e.g. another kind)
        return
    it = _read_dataset(g, f"{opt.name}/iteration", (), path, allow_nonfinite)
    if it < 0 or it != int(it) or it > 2**62:
        raise ModelFileError(f"load_model: {path}: bad optimizer iteration {it}")
    params = model.flat_parameters()
    opt.build(params.size, like=params)
    for slot, flat in opt.state.items():
        for layer, var, off, size, shape in _named_slices(model):
            name = _slot_name(opt, model, layer, var, slot)
            value = _read_dataset(g, name, shape, path, allow_nonfinite).reshape(-1)
            if isinstance(flat, np.ndarray):
                flat[off:off + size] = value
            else:   # state on the GPU
                flat[off:off + size].set(np.ascontiguousarray(value, np.float32))
    opt.iterations = int(it)
