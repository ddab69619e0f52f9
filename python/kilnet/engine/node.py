"""Symbolic tensors and graph nodes: the functional API.

`kilnet.Input(shape)` returns a KerasTensor: a shape and dtype with no data. Calling a layer on
KerasTensors runs nothing; it records a Node (the layer, the call's arguments with their
KerasTensors, the outputs) and returns new KerasTensors that remember that node. `Model(inputs,
outputs)` walks these nodes back from the outputs to find the graph (kilnet.models.functional).
"""
from __future__ import annotations

import numpy as np

from kilnet.engine import precision
from kilnet.engine import tensor as _tensor_ops
from kilnet.engine.tape import pause_recording
from kilnet.naming import unique_name

__all__ = ["KerasTensor", "Node", "OpCall", "Input", "any_symbolic", "symbolic_call", "symbolic_op",
           "map_structure", "map_shapes", "flatten"]


class KerasTensor:
    """A symbolic tensor: shape (None for the batch and unknown sizes), dtype, and the node
    (with its output index) that makes it; `Input` tensors have no node."""
    __slots__ = ("shape", "dtype", "name", "node", "index", "__weakref__")

    def __init__(self, shape, dtype="float32", name=None, node=None, index=0):
        self.shape = tuple(None if s is None else int(s) for s in shape)
        self.dtype = precision.dtype_name(precision.np_dtype(dtype)) if dtype is not None else "float32"
        self.name, self.node, self.index = name, node, index

    @property
    def ndim(self):
        return len(self.shape)

    def __repr__(self):
        return f"<KerasTensor shape={self.shape}, dtype={self.dtype}, name={self.name}>"

    # Arithmetic on symbolic tensors records op nodes (x + y, x * 2, -x, x @ w, x[:, 0]).
    def __add__(self, o): return symbolic_op(_tensor_ops.add, "add", (self, o))
    def __radd__(self, o): return symbolic_op(_tensor_ops.add, "add", (o, self))
    def __sub__(self, o): return symbolic_op(_tensor_ops.subtract, "subtract", (self, o))
    def __rsub__(self, o): return symbolic_op(_tensor_ops.subtract, "subtract", (o, self))
    def __mul__(self, o): return symbolic_op(_tensor_ops.multiply, "multiply", (self, o))
    def __rmul__(self, o): return symbolic_op(_tensor_ops.multiply, "multiply", (o, self))
    def __truediv__(self, o): return symbolic_op(_tensor_ops.divide, "divide", (self, o))
    def __rtruediv__(self, o): return symbolic_op(_tensor_ops.divide, "divide", (o, self))
    def __matmul__(self, o): return symbolic_op(_tensor_ops.matmul, "matmul", (self, o))
    def __pow__(self, o): return symbolic_op(_tensor_ops.power, "power", (self, o))
    def __neg__(self): return symbolic_op(_tensor_ops.negative, "negative", (self,))
    def __getitem__(self, idx): return symbolic_op(_tensor_ops.getitem, "getitem", (self, idx))

    def __array__(self, *a, **k):
        raise TypeError("a KerasTensor (from kilnet.Input) has no values: it only describes the inputs of a "
                        "functional model; build the model with kilnet.Model(inputs, outputs) and call it on data")

    __hash__ = object.__hash__


class Node:
    """One call of a layer on symbolic inputs. args/kwargs keep the call's structure with
    KerasTensors in place; inputs lists those KerasTensors in order."""
    __slots__ = ("layer", "args", "kwargs", "inputs", "outputs")

    def __init__(self, layer, args, kwargs, outputs):
        self.layer, self.args, self.kwargs, self.outputs = layer, args, kwargs, outputs
        self.inputs = [t for t in flatten((args, kwargs)) if isinstance(t, KerasTensor)]


class OpCall:
    """A kilnet.ops function (or an operator) applied to KerasTensors: a graph node without a
    layer and without weights; the functional model runs it like a layer call."""

    def __init__(self, fn, name):
        self.fn, self.name = fn, unique_name(name)
        self._inbound_nodes: list = []

    def __call__(self, *args, **kwargs):
        kwargs.pop("training", None)
        return self.fn(*args, **kwargs)

    def count_params(self):
        return 0


def symbolic_op(fn, name, args, kwargs=None):
    """Record fn(*args, **kwargs) on KerasTensors as a node; its output specs come from running
    fn once on zeros (batch 1) with no tape."""
    kwargs = kwargs or {}
    op = OpCall(fn, name)
    try:
        spec = _trial_spec(op, args, kwargs)
    except (ValueError, TypeError) as e:
        shapes = [t.shape for t in flatten((args, kwargs)) if isinstance(t, KerasTensor)]
        raise type(e)(f"{name} on symbolic input(s) of shape {' and '.join(map(str, shapes))}: {e}") from None
    return _make_node(op, args, kwargs, spec)


def Input(shape=None, batch_size=None, dtype=None, sparse=None, batch_shape=None, name=None, tensor=None,
          optional=False):
    """A symbolic input of shape (batch, *shape): `x = kilnet.Input((28, 28, 1))`."""
    if sparse:
        raise ValueError("Input: sparse inputs are not supported")
    if batch_shape is not None:
        shape = tuple(batch_shape)[1:]
        batch_size = tuple(batch_shape)[0]
    if shape is None:
        raise ValueError("Input: shape= is required (the shape of one sample, without the batch)")
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"Input: shape must be a tuple of ints, got {shape!r}") from None
    for s in shape:
        if s is not None and (not isinstance(s, (int, np.integer)) or isinstance(s, bool) or s < 0):
            raise ValueError(f"Input: shape must hold non-negative ints or None, got {shape!r}")
    name = name or unique_name("input_layer")
    return KerasTensor((batch_size, *shape), dtype or "float32", name=name)


def flatten(structure) -> list:
    """The leaves of nested lists, tuples and dicts, in order."""
    out = []
    _flatten_into(structure, out)
    return out


def _flatten_into(v, out):
    # not a recursive closure: that would be a reference cycle per call, left to the collector
    if isinstance(v, (list, tuple)):
        for x in v:
            _flatten_into(x, out)
    elif isinstance(v, dict):
        for x in v.values():
            _flatten_into(x, out)
    else:
        out.append(v)


def map_structure(fn, structure):
    if isinstance(structure, list):
        return [map_structure(fn, v) for v in structure]
    if isinstance(structure, tuple):
        return tuple(map_structure(fn, v) for v in structure)
    if isinstance(structure, dict):
        return {k: map_structure(fn, v) for k, v in structure.items()}
    return fn(structure)


def map_shapes(structure):
    """The input shape a layer's build() receives: one tuple, or a list of tuples for a list
    of inputs (as Keras), with the batch size left as it is."""
    if isinstance(structure, (list, tuple)):
        return [tuple(t.shape) for t in flatten(structure)]
    if isinstance(structure, dict):
        return {k: tuple(v.shape) for k, v in structure.items()}
    return tuple(structure.shape)


def any_symbolic(args, kwargs) -> bool:
    for v in args:
        if isinstance(v, KerasTensor) or (isinstance(v, (list, tuple, dict)) and _has_kt(v)):
            return True
    return bool(kwargs) and _has_kt(kwargs)


def _has_kt(structure) -> bool:
    return any(isinstance(t, KerasTensor) for t in flatten(structure))


def symbolic_call(layer, args, kwargs):
    """Record a node for layer(*args, **kwargs) on KerasTensors; returns its KerasTensor(s).
    The layer is built from the input shapes; the output shapes come from the layer's
    compute_output_shape, or from running it once on zeros when it has none."""
    inputs = args[0]
    shapes = map_shapes(inputs)
    try:
        if not layer.built:
            layer._build(_batchless(shapes), initialize=layer._initialize)
        out_spec = _output_spec(layer, args, kwargs, shapes)
    except (ValueError, TypeError) as e:
        raise type(e)(f"layer {layer.name!r} ({type(layer).__name__}) called on input(s) of shape "
                      f"{_fmt_shapes(shapes)}: {e}") from None
    return _make_node(layer, args, kwargs, out_spec)


def _make_node(layer, args, kwargs, out_spec):
    node = Node(layer, args, kwargs, None)
    counter = [0]

    def make(spec):
        shape, dtype = spec
        kt = KerasTensor(shape, dtype, name=layer.name, node=node, index=counter[0])
        counter[0] += 1
        return kt
    node.outputs = _map_specs(make, out_spec)
    layer._inbound_nodes.append(node)
    return node.outputs


def _fmt_shapes(shapes):
    if isinstance(shapes, list):
        return " and ".join(str(tuple(s)) for s in shapes)
    return str(tuple(shapes)) if not isinstance(shapes, dict) else str(shapes)


def _batchless(shapes):
    if isinstance(shapes, list):
        return [(None, *s[1:]) for s in shapes]
    if isinstance(shapes, dict):
        return {k: (None, *s[1:]) for k, s in shapes.items()}
    return (None, *shapes[1:])


def _is_spec(v):
    return isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], tuple) and isinstance(v[1], str)


def _map_specs(fn, v):
    if _is_spec(v):
        return fn(v)
    if isinstance(v, list):
        return [_map_specs(fn, x) for x in v]
    if isinstance(v, tuple):
        return tuple(_map_specs(fn, x) for x in v)
    if isinstance(v, dict):
        return {k: _map_specs(fn, x) for k, x in v.items()}
    raise TypeError(f"unexpected layer output {v!r}")


def _output_spec(layer, args, kwargs, shapes):
    """Nested (shape, dtype) specs of the layer's output."""
    if layer._has_shape_rule():
        out = layer.compute_output_shape(_batchless(shapes))
        dtype = layer._output_dtype()
        if isinstance(out, list) and out and isinstance(out[0], (tuple, list)):
            return [(tuple(o), dtype) for o in out]
        return (tuple(out), dtype)
    return _trial_spec(layer, args, kwargs)   # no shape rule: a trial run


def _trial_spec(fn, args, kwargs):
    """Nested (shape, dtype) specs of fn's output on zeros standing for the KerasTensors
    (batch 1, unknown sizes 1), computed with no tape recording."""
    Tensor = _tensor_ops.Tensor

    def zeros(t):
        if isinstance(t, KerasTensor):
            shape = tuple(1 if s is None else s for s in t.shape)
            return Tensor(np.zeros(shape, precision.np_dtype(t.dtype)))
        return t
    with pause_recording():
        res = fn(*map_structure(zeros, list(args)), **map_structure(zeros, dict(kwargs)))

    def spec(t):
        v = t.value if isinstance(t, Tensor) else np.asarray(t)
        return ((None, *v.shape[1:]) if v.ndim else (), precision.dtype_name(v.dtype))
    return map_structure(spec, res)
