"""Keras 3's weights layout: `model.weights.h5` inside a .keras archive, and `.weights.h5` files.

Read off files Keras 3.15 writes (keras/src/saving/saving_lib.py, `_save_state`):
    vars                                    attrs name=<model name>; the model's own variables
    layers/<key>/vars/0, 1, ...             one group per layer, its variables by position
    layers/<key>/layers/<key>/vars/...      the layers of a nested Sequential/Functional
    layers/lstm/cell/vars/0..2              an RNN keeps its weights in its cell
    layers/time_distributed/layer/vars/...  a wrapper's weights are the wrapped layer's
    <attr>/vars, <attr>/<key>/vars          a subclassed model: its attributes, sorted by name
                                            (private ones last), then `layers` for the rest
    optimizer/vars/0, 1, ...                iteration, learning_rate, slots (optimizer_state.py)
<key> is the snake_case class name, made unique within its container by _1, _2, ... in
order ("dense", "dense_1"), counted over every item, including items already written through
an earlier path (a shared layer is written once, at its first path). Each visited layer gets a
`vars` group with attribute name=<layer name>, even when it has no variables. A layer's
variables are its trainable ones, then the others, each in creation order.
"""
from __future__ import annotations

import re
import warnings

import numpy as np

from kilnet.saving import h5_checks
from kilnet.saving.errors import ModelFileError
from kilnet.saving.optimizer_state import optimizer_values, restore_optimizer

__all__ = ["variable_groups", "write_weights", "read_weights"]

# Where Keras keeps a kilnet layer's own variables when it holds them in a sub-object
# (kilnet's RNN layers hold their cell's weights themselves). A layer can say so itself with
# `keras_state_path`.
_STATE_SUBPATH = {"SimpleRNN": "cell", "LSTM": "cell", "GRU": "cell"}


def keras_snake_case(name):
    """keras.src.utils.naming.to_snake_case, which names the groups."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _layer_cls():
    from kilnet.layers.base import Layer
    return Layer


def _saved_variables(layer):
    own = layer.own_variables()
    return [v for v in own if v.trainable] + [v for v in own if not v.trainable]


def _children(obj):
    """(attribute name, value) pairs Keras's walk visits below obj, in its order."""
    Layer = _layer_cls()
    out = []
    is_model = getattr(obj, "_is_model_class", False)
    structured = is_model and hasattr(obj, "_keras_module")   # Sequential, Functional
    if structured:
        out.append(("layers", obj.layers))
    attrs = {}
    for k, v in vars(obj).items():
        if k in ("_store", "_inbound_nodes", "_local") or k.startswith("__"):
            continue
        if isinstance(v, Layer) or (isinstance(v, (list, tuple, dict)) and _holds_layers(v, Layer)):
            attrs[k] = v
    if is_model and not structured:
        attrs["layers"] = obj.layers
    for k in sorted(attrs, key=lambda n: f"~{n}" if n.startswith("_") else n):
        out.append((k, attrs[k]))
    return out


def _holds_layers(v, Layer, depth=0):
    items = v.values() if isinstance(v, dict) else v
    for x in items:
        if isinstance(x, Layer) or (depth < 3 and isinstance(x, (list, tuple, dict)) and _holds_layers(x, Layer, depth + 1)):
            return True
    return False


def variable_groups(model):
    """[(path, layer, variables)] for every layer Keras visits, in its order ("" is the model)."""
    out, visited = [], set()
    _walk(model, "", out, visited)
    return out


def _join(path, name):
    return f"{path}/{name}" if path else name


def _walk(obj, path, out, visited):
    if id(obj) in visited:
        return
    visited.add(id(obj))
    sub = getattr(obj, "keras_state_path", None) or _STATE_SUBPATH.get(type(obj).__name__)
    own = _saved_variables(obj)
    if sub:
        out.append((path, obj, []))
        out.append((_join(path, sub), obj, own))
    else:
        out.append((path, obj, own))
    Layer = _layer_cls()
    for name, child in _children(obj):
        if isinstance(child, Layer):
            _walk(child, _join(path, name), out, visited)
        else:
            _walk_container(child, _join(path, name), out, visited)


def _walk_container(items, path, out, visited):
    Layer = _layer_cls()
    used = {}
    for item in (items.values() if isinstance(items, dict) else items):
        if isinstance(item, Layer):
            _walk(item, _join(path, _unique(keras_snake_case(type(item).__name__), used)), out, visited)
        elif isinstance(item, (list, tuple, dict)):
            _walk_container(item, _join(path, _unique("container", used)), out, visited)


def _unique(name, used):
    if name in used:
        used[name] += 1
        return f"{name}_{used[name]}"
    used[name] = 0
    return name


def _host(a):
    return np.asarray(a if isinstance(a, np.ndarray) else a.get())


# ------------------------------------------------------------------------ write
def write_weights(f, model, include_optimizer=True):
    """Write the model's variables (and its optimizer's) into the open h5py File f."""
    for path, layer, variables in variable_groups(model):
        g = f.create_group(_join(path, "vars"))
        name = getattr(layer, "keras_weight_scope", None) if path.endswith("/cell") else None
        g.attrs["name"] = name or layer.name
        for i, v in enumerate(variables):
            g.create_dataset(str(i), data=_host(v.value))
    opt = model.optimizer
    if include_optimizer and opt is not None:
        g = f.create_group("optimizer/vars")
        g.attrs["name"] = opt.name
        paths = _variable_paths(model)
        for i, (_, value) in enumerate(optimizer_values(model, lambda v: paths.get(id(v), v.name))):
            g.create_dataset(str(i), data=value)
        inner = getattr(opt, "inner_optimizer", None)
        if inner is not None:   # Keras 3 also writes a LossScaleOptimizer's inner optimizer on its own
            g = f.create_group("optimizer/inner_optimizer/vars")
            g.attrs["name"] = inner.name
            for i, (_, value) in enumerate(optimizer_values(model, lambda v: paths.get(id(v), v.name), opt=inner)):
                g.create_dataset(str(i), data=value)


def _variable_paths(model):
    """Keras's variable paths ("dense/kernel", "inner/in1/kernel") for optimizer slot names."""
    out = {}
    for path, layer, variables in variable_groups(model):
        for v in variables:
            out.setdefault(id(v), f"{layer.name}/{v.name}")
    return out


# ------------------------------------------------------------------------ read
def read_weights(f, model, where, skip_mismatch=False, allow_nonfinite=False, load_optimizer=False):
    """Set the model's variables from the open h5py File f (Keras 3 layout). A layer whose group
    is missing or whose variables disagree raises ModelFileError (skip_mismatch: a warning, and
    the layer keeps its values)."""
    for path, layer, variables in variable_groups(model):
        gpath = _join(path, "vars")
        try:
            g = _group(f, gpath, where)
            if g is None:
                if not variables:
                    continue
                raise ModelFileError(f"{where}: no weights for layer {layer.name!r} (group {gpath!r} is missing)")
            keys = [k for k in g.keys()]
            if sorted(keys, key=_index) != [str(i) for i in range(len(keys))]:
                raise ModelFileError(f"{where}: group {gpath!r} holds {keys[:10]}, not variables 0..n-1")
            if len(keys) != len(variables):
                raise ModelFileError(f"{where}: layer {layer.name!r} expects {len(variables)} variables "
                                     f"({', '.join(v.name for v in variables) or 'none'}), the file has "
                                     f"{len(keys)} at {gpath!r}")
            values = [h5_checks.read_dataset(g, str(i), v.shape, where, allow_nonfinite)
                      for i, v in enumerate(variables)]
        except ModelFileError as e:
            if not skip_mismatch:
                raise
            warnings.warn(f"skipping layer {layer.name!r}: {e}", stacklevel=3)
            continue
        for v, value in zip(variables, values):
            _assign(v, value)
    if load_optimizer and model.optimizer is not None:
        g = _group(f, "optimizer/vars", where)
        if g is not None and len(g.keys()):
            n = len(g.keys())
            if sorted(g.keys(), key=_index) != [str(i) for i in range(n)]:
                raise ModelFileError(f"{where}: optimizer/vars holds {list(g.keys())[:10]}, not 0..n-1")
            values = [h5_checks.read_dataset(g, str(i), None, where, allow_nonfinite) for i in range(n)]
            restore_optimizer(model, values, where)


def _index(k):
    return int(k) if k.isdigit() else -1


def _group(f, path, where):
    g = f
    for part in path.split("/"):
        if part not in g:
            return None
        g = h5_checks.hard_group(g, part, where)
    return g


def _assign(var, value):
    dst = var.value
    if isinstance(dst, np.ndarray):
        np.copyto(dst, value, casting="unsafe")
    else:   # on the GPU: one host-to-device copy
        dst.set(np.ascontiguousarray(value, dtype=np.float32))
