"""A functional model's graph as Keras writes it, both ways, and Keras's order of its layers.

Keras 3 writes each layer with its calls ("inbound_nodes") as
    {"args": [{"class_name": "__keras_tensor__", "config": {"shape", "dtype",
               "keras_history": [layer_name, node_index, tensor_index]}}], "kwargs": {}}
and tf.keras 2 as nested lists: [[["dense", 0, 0, {}], ...], ...] (one list of inputs per call).
A nested functional model keeps its own first node in Keras, so references to its calls start
at node index 1 (tf.keras 2 does the same for a nested Sequential that starts with an
InputLayer). Both forms load; kilnet writes the Keras 3 one.

`keras_operation_order` is Keras's `map_graph` order (keras/src/ops/function.py): operations by
decreasing depth, ties by first visit in a depth-first walk from the outputs. Keras names the
weight groups of a .keras file after this order, so kilnet keeps its layers in it.
"""
from __future__ import annotations

import math

from kilnet import serialization
from kilnet.engine.node import Input, KerasTensor, flatten, map_structure

__all__ = ["keras_operation_order", "functional_get_config", "functional_from_config"]

_MAX_LAYERS = 100_000
_MAX_NODES = 10_000         # calls of one layer
_MAX_INPUT_ELEMENTS = 1 << 31


# ------------------------------------------------------------------------ Keras's layer order
def keras_operation_order(inputs, outputs, input_layers):
    """The graph's operations (InputLayers, layers, op calls) in Keras's map_graph order."""
    in_layer = {id(t): layer for t, layer in zip(inputs, input_layers)}

    def producer(t):
        if id(t) in in_layer:
            return in_layer[id(t)], ("input", id(t)), None
        return t.node.layer, id(t.node), t.node

    finished, nodes_order, op_index, info = set(), [], {}, {}
    ops = {}

    def visit(t):
        op, key, node = producer(t)
        if key in finished:
            return
        ops[id(op)] = op
        op_index.setdefault(id(op), len(op_index))
        parents = []
        if node is not None:
            for it in node.inputs:
                visit(it)
                parents.append(producer(it)[1])
        finished.add(key)
        nodes_order.append(key)
        info[key] = (id(op), parents)

    for t in flatten(outputs):
        visit(t)
    node_depth, op_depth = {}, {}
    for key in reversed(nodes_order):
        depth = node_depth.setdefault(key, 0)
        op = info[key][0]
        depth = max(depth, op_depth.get(op, 0))
        op_depth[op] = depth
        node_depth[key] = depth
        for p in info[key][1]:
            node_depth[p] = max(depth + 1, node_depth.get(p, 0))
    for t in inputs:   # inputs not connected to any output still belong to the model
        layer = in_layer[id(t)]
        if id(layer) not in op_depth:
            ops[id(layer)] = layer
            op_depth[id(layer)] = 0
            op_index[id(layer)] = -1
    by_depth: dict = {}
    for op, d in op_depth.items():
        by_depth.setdefault(d, []).append(op)
    order = []
    for d in sorted(by_depth, reverse=True):
        order += sorted(by_depth[d], key=lambda o: op_index[o])
    return [ops[o] for o in order]


# ------------------------------------------------------------------------ writing
def functional_get_config(model) -> dict:
    from kilnet.layers.base import Layer
    own = {id(n) for n in model._nodes}
    in_names = {id(t): t.name for t in model.inputs}

    def node_index(layer, node):
        kept = [n for n in layer._inbound_nodes if id(n) in own]
        # a nested functional model (it has its own graph) counts its own creation as node 0, as Keras
        return (1 if getattr(layer, "_nodes", None) is not None else 0) + kept.index(node)

    def history(t):
        if id(t) in in_names:
            return [in_names[id(t)], 0, 0]
        return [t.node.layer.name, node_index(t.node.layer, t.node), t.index]

    def arg(v):
        if isinstance(v, KerasTensor):
            return {"class_name": "__keras_tensor__",
                    "config": {"shape": list(v.shape), "dtype": v.dtype, "keras_history": history(v)}}
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        raise ValueError(f"model {model.name!r}: a layer call has the argument {v!r}, which a model file "
                         "cannot hold")

    entries, seen = [], set()
    for op in model._operations:
        if not isinstance(op, Layer):
            raise ValueError(f"model {model.name!r} applies the op {op.name!r} to symbolic tensors (x + y, "
                             "x[:, 0], ops.* on kilnet.Input tensors); a model file can only name layers: use "
                             "the layer (Add, Reshape, ...) or a registered custom layer, then save")
        if op.name in seen:
            raise ValueError(f"model {model.name!r}: two layers are named {op.name!r}; names must be unique "
                             "to save the model")
        seen.add(op.name)
        if op in model._input_layers:
            shape = [None, *op._input_shape]
            entry = {"module": "keras.layers", "class_name": "InputLayer",
                     "config": {"batch_shape": shape, "dtype": "float32", "sparse": False, "ragged": False,
                                "name": op.name, "optional": False},
                     "registered_name": None, "name": op.name, "inbound_nodes": []}
        else:
            entry = serialization.layer_entry(op)
            entry["name"] = op.name
            entry["inbound_nodes"] = [
                {"args": [map_structure(arg, a) for a in n.args],
                 "kwargs": {k: map_structure(arg, v) for k, v in n.kwargs.items()
                            if k != "training" and v is not None}}
                for n in op._inbound_nodes if id(n) in own]
        entries.append(entry)
    return {"name": model.name, "trainable": model.trainable, "layers": entries,
            "input_layers": map_structure(history, model._inputs_struct),
            "output_layers": map_structure(history, model._outputs_struct)}


# ------------------------------------------------------------------------ reading
def functional_from_config(cls, config, initialize=True):
    """A functional model from its config, in the Keras 3 or the tf.keras 2 form. Layers
    resolve through kilnet.serialization (registered types, registered user classes,
    custom_objects in scope): nothing is imported or evaluated."""
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        raise ValueError("functional model config has no layer list")
    layer_cfgs = config["layers"]
    if len(layer_cfgs) > _MAX_LAYERS:
        raise ValueError(f"functional model config lists {len(layer_cfgs)} layers; refused as absurd")
    created, outputs_of, pending, order = {}, {}, {}, []
    keras2 = False
    for entry in layer_cfgs:
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
            raise ValueError(f"malformed layer entry {str(entry)[:100]!r}")
        name = entry.get("name", entry["config"].get("name"))
        if not isinstance(name, str) or not name:
            raise ValueError(f"layer entry without a name: {str(entry)[:100]!r}")
        if name in created:
            raise ValueError(f"two layers are named {name!r} in the model config")
        nodes = entry.get("inbound_nodes") or []
        if not isinstance(nodes, list) or len(nodes) > _MAX_NODES:
            raise ValueError(f"layer {name!r}: inbound_nodes must be a list (of at most {_MAX_NODES} calls)")
        keras2 = keras2 or any(isinstance(n, list) for n in nodes)
        if entry.get("class_name") == "InputLayer":
            created[name] = "input"
            outputs_of[name] = [_input_tensor(entry["config"], name)]
        else:
            try:
                layer = serialization.from_entry(entry, f"layer {name!r}")
            except (TypeError, ValueError) as e:
                raise ValueError(f"layer {name!r} ({entry.get('class_name')}) has an invalid or unsupported "
                                 f"config: {e}") from None
            if hasattr(layer, "_initialize") and not getattr(layer, "built", False):
                layer._initialize = initialize
            created[name] = layer
            outputs_of[name] = []
            pending[name] = list(nodes)
        order.append(name)

    def offset(lname):
        layer = created[lname]
        if not getattr(layer, "_is_model_class", False):
            return 0
        if getattr(layer, "_nodes", None) is not None:   # a nested functional model
            return 1
        return 1 if keras2 and getattr(layer, "_declared_input", None) is not None else 0

    missing = object()

    def tensor(hist):
        if not (isinstance(hist, (list, tuple)) and len(hist) >= 3 and isinstance(hist[0], str)
                and all(isinstance(i, int) and not isinstance(i, bool) for i in hist[1:3])):
            raise ValueError(f"bad tensor reference {str(hist)[:100]!r}")
        lname, nidx, tidx = hist[0], hist[1], hist[2]
        if lname not in created:
            raise ValueError(f"a call refers to layer {lname!r}, which the config does not define")
        outs = outputs_of[lname]
        i = nidx - offset(lname)
        if i < 0:
            raise ValueError(f"bad node index {nidx} for layer {lname!r}")
        if i >= len(outs):
            return missing
        flat = flatten(outs[i])
        if not 0 <= tidx < len(flat):
            raise ValueError(f"layer {lname!r} has {len(flat)} output(s); the config asks for output {tidx}")
        return flat[tidx]

    def node_args(data):
        """(args, kwargs) of one call, or None when an input is not computed yet."""
        if isinstance(data, dict):   # Keras 3
            def de(v):
                if isinstance(v, dict) and v.get("class_name") == "__keras_tensor__":
                    t = tensor((v.get("config") or {}).get("keras_history"))
                    if t is missing:
                        raise LookupError
                    return t
                if isinstance(v, dict):
                    return {k: de(x) for k, x in v.items()}
                if isinstance(v, list):
                    return [de(x) for x in v]
                return v
            try:
                args = de(data.get("args") or [])
                kwargs = de(data.get("kwargs") or {})
            except LookupError:
                return None
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise ValueError(f"malformed call {str(data)[:100]!r}")
        elif isinstance(data, list):   # tf.keras 2: [[name, node, tensor, kwargs], ...]
            ts, kwargs = [], {}
            for ref in data:
                if not isinstance(ref, list):
                    raise ValueError(f"malformed call {str(data)[:100]!r}")
                t = tensor(ref)
                if t is missing:
                    return None
                ts.append(t)
                if len(ref) > 3 and isinstance(ref[3], dict):
                    kwargs.update(ref[3])
            if not ts:
                raise ValueError("a layer call without inputs")
            args = [ts[0] if len(ts) == 1 else ts]
        else:
            raise ValueError(f"malformed call {str(data)[:100]!r}")
        kwargs = {k: v for k, v in kwargs.items() if v is not None and k not in ("training", "mask")}
        return args, kwargs

    while pending:
        progress = False
        for name in order:
            calls = pending.get(name)
            if calls is None:
                continue
            while calls:
                got = node_args(calls[0])
                if got is None:
                    break
                args, kwargs = got
                layer = created[name]
                try:
                    out = layer(*args, **kwargs)
                except (TypeError, ValueError) as e:
                    raise ValueError(f"layer {name!r}: cannot apply it as the config says: {e}") from None
                outputs_of[name].append(out)
                calls.pop(0)
                progress = True
            if not calls:
                del pending[name]
        if not progress:
            raise ValueError(f"the model config's graph has a cycle or refers to calls that do not exist "
                             f"(unresolved: {', '.join(sorted(pending))[:200]})")

    def io(spec, what):
        if isinstance(spec, list) and len(spec) >= 3 and isinstance(spec[0], str):
            t = tensor(spec)
            if t is missing:
                raise ValueError(f"{what} refers to a call that does not exist: {spec!r}")
            return t
        if isinstance(spec, dict):
            return {k: io(v, what) for k, v in spec.items()}
        if isinstance(spec, (list, tuple)) and spec:
            out = [io(v, what) for v in spec]
            return out[0] if keras2 and len(out) == 1 else out
        raise ValueError(f"malformed {what}: {str(spec)[:100]!r}")

    inputs = io(config.get("input_layers"), "input_layers")
    outputs = io(config.get("output_layers"), "output_layers")
    name = config.get("name")
    name = name if isinstance(name, str) and name and "/" not in name else None
    return cls(inputs=inputs, outputs=outputs, name=name, trainable=bool(config.get("trainable", True)))


def _input_tensor(cfg, name):
    shape = cfg.get("batch_shape", cfg.get("batch_input_shape"))
    if shape is None and cfg.get("shape") is not None:
        shape = [None, *cfg["shape"]]
    if not isinstance(shape, list) or not shape:
        raise ValueError(f"InputLayer {name!r} has no batch_shape")
    dims = shape[1:]
    for s in dims:
        if s is not None and (not isinstance(s, int) or isinstance(s, bool) or s < 1):
            raise ValueError(f"InputLayer {name!r}: bad shape {shape!r}")
    if math.prod(s or 1 for s in dims) > _MAX_INPUT_ELEMENTS:
        raise ValueError(f"InputLayer {name!r}: absurd shape {shape!r}")
    if cfg.get("sparse") or cfg.get("ragged"):
        raise ValueError(f"InputLayer {name!r}: sparse and ragged inputs are not supported")
    if "/" in name:
        raise ValueError(f"InputLayer name {name!r} contains '/'")
    return Input(shape=tuple(dims), name=name)
