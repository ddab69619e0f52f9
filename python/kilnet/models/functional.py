"""Functional: the model `Model(inputs, outputs)` builds from the nodes its layers recorded.

The graph is found once, walking back from the outputs to the inputs; calling the model runs
the nodes in that (topological) order on real tensors, so each layer call lands on the tape
like any other. A layer used by two nodes (a shared layer) runs twice and its weight gradients
add up; a Model used as a layer is one more node.
"""
from __future__ import annotations

from kilnet import serialization
from kilnet.engine import fusion
from kilnet.engine.node import KerasTensor, flatten, map_structure
from kilnet.layers import conv_dense
from kilnet.layers.base import Layer
from kilnet.layers.core import InputLayer
from kilnet.models.functional_config import functional_from_config, functional_get_config, keras_operation_order
from kilnet.models.model import Model

__all__ = ["Functional"]


class Functional(Model):
    _keras_module = "keras.src.models.functional"   # what Keras 3 writes in a file's "module"
    _keras_registered_name = "Functional"

    def __init__(self, inputs=None, outputs=None, name=None, trainable=True, **kwargs):
        super().__init__(name=name, trainable=trainable, **kwargs)
        if inputs is None or outputs is None:
            raise ValueError("Model(inputs, outputs): both inputs and outputs are required")
        self._inputs_struct, self._outputs_struct = inputs, outputs
        self.inputs = flatten(inputs)
        self.outputs = flatten(outputs)
        for what, ts in (("inputs", self.inputs), ("outputs", self.outputs)):
            for t in ts:
                if not isinstance(t, KerasTensor):
                    raise TypeError(f"Model: {what} must be KerasTensors (from kilnet.Input and layer calls on "
                                    f"them), got {type(t).__name__}")
        for t in self.inputs:
            if t.node is not None:
                raise ValueError(f"Model: input {t.name!r} is a layer's output, not a kilnet.Input")
        self._nodes = _topological_nodes(self.inputs, self.outputs)
        self._fusion_groups = None   # {node index: (flatten's, dense's)} once the trainer asks
        self._input_layers = [InputLayer(shape=t.shape[1:], name=t.name) for t in self.inputs]
        # Keras's order of the layers (by depth from the outputs): model.layers, the weights'
        # layout and the groups of a .keras file follow it
        self._operations = keras_operation_order(self.inputs, self.outputs, self._input_layers)
        self._layers = [op for op in self._operations if isinstance(op, Layer)]   # not ops on tensors
        self.built = True
        self.input_shape = self.inputs[0].shape if len(self.inputs) == 1 else [t.shape for t in self.inputs]
        outs = [t.shape for t in self.outputs]
        self.output_shape = outs[0] if len(outs) == 1 else outs

    @property
    def layers(self) -> list:
        return list(self._layers)

    @property
    def input_names(self):
        return [t.name for t in self.inputs]

    @property
    def output_names(self):
        return [t.node.layer.name for t in self.outputs]

    def _input_names(self):
        return self.input_names

    def output_keys(self):
        names = self.output_names
        if isinstance(self._outputs_struct, dict):
            return list(self._outputs_struct)
        return names

    def _output_shapes(self):
        return [t.shape for t in self.outputs]

    def build(self, input_shape=None):
        pass

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict:
        """The graph in Keras 3's form: layers with their calls, input_layers, output_layers."""
        return functional_get_config(self)

    @classmethod
    def from_config(cls, config, custom_objects=None, initialize=True):
        """A functional model from its config (Keras 3 or tf.keras 2 form)."""
        with serialization.custom_objects_scope(custom_objects):
            return functional_from_config(cls, config, initialize=initialize)

    def compute_output_shape(self, input_shape):
        outs = [t.shape for t in self.outputs]
        if isinstance(self._outputs_struct, dict):
            raise TypeError("dict outputs")   # symbolic_call falls back to a trial run
        return outs[0] if len(outs) == 1 else outs

    def _has_shape_rule(self) -> bool:
        return not isinstance(self._outputs_struct, dict)

    def _check_input_arrays(self, arrays, what):
        for t, a in zip(self.inputs, arrays):
            want = t.shape[1:]
            if len(a.shape) - 1 != len(want) or any(w is not None and w != s for w, s in zip(want, a.shape[1:])):
                raise ValueError(f"{what}: input {t.name!r} expects arrays of shape (batch, "
                                 f"{', '.join(map(str, want))}), got {a.shape}")

    def call(self, inputs, training=None):
        flat = self._flat_inputs(inputs)
        values = {id(kt): v for kt, v in zip(self.inputs, flat)}

        def look(t):
            return values[id(t)] if isinstance(t, KerasTensor) else t
        nodes = self._nodes
        groups = None
        if fusion.allowed():
            groups = self._fusion_groups
            if groups is None:   # found once: the graph never changes
                groups = self._fusion_groups = _conv_dense_groups(nodes, self.outputs)
        skip = ()
        for i, node in enumerate(nodes):
            if i in skip:
                continue
            if groups and i in groups:   # the trainer's step: Conv2D -> Flatten -> Dense fused
                j, k = groups[i]
                x = values[id(node.inputs[0])]
                if conv_dense.group_fits(node.layer, nodes[j].layer, nodes[k].layer) and conv_dense.input_fits(x):
                    values[id(nodes[k].outputs)] = conv_dense.call_group(node.layer, nodes[k].layer, x)
                    skip = (*skip, j, k)
                    continue
            out = node.layer(*map_structure(look, node.args), **map_structure(look, node.kwargs))
            for kt, v in zip(flatten(node.outputs), flatten(out)):
                values[id(kt)] = v
        return map_structure(look, self._outputs_struct)

    def _flat_inputs(self, inputs):
        names = self.input_names
        if isinstance(inputs, dict):
            unknown = [k for k in inputs if k not in names]
            if unknown:
                raise ValueError(f"model {self.name!r}: inputs name(s) {unknown} that are not among its inputs "
                                 f"{names}")
            missing = [k for k in names if k not in inputs]
            if missing:
                raise ValueError(f"model {self.name!r}: no value for input(s) {missing}")
            return [inputs[k] for k in names]
        flat = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if len(flat) != len(self.inputs):
            raise ValueError(f"model {self.name!r} takes {len(self.inputs)} input(s) ({', '.join(names)}), "
                             f"got {len(flat)}")
        for kt, v in zip(self.inputs, flat):
            shape = tuple(v.shape)
            want = kt.shape
            if len(shape) != len(want) or any(w is not None and w != s for w, s in zip(want[1:], shape[1:])):
                raise ValueError(f"model {self.name!r}: input {kt.name!r} expects shape {want}, got {shape}")
        return flat


def _conv_dense_groups(nodes, outputs) -> dict:
    """{i: (j, k)}: node i a Conv2D call whose output only node j (a Flatten call) reads, whose
    output only node k (a Dense call) reads, neither a model output; i, j, k are positions in
    `nodes`. The layers' settings are checked per call (conv_dense.group_fits)."""
    readers: dict = {}
    for j, node in enumerate(nodes):
        for t in node.inputs:
            readers.setdefault(id(t), []).append(j)
    out_ids = {id(t) for t in outputs}

    def only_reader(node):
        outs = node.outputs
        if not isinstance(outs, KerasTensor) or id(outs) in out_ids:
            return None
        r = readers.get(id(outs), [])
        if len(r) != 1 or len(nodes[r[0]].inputs) != 1 or set(nodes[r[0]].kwargs) - {"training"}:
            return None
        return r[0]
    groups = {}
    for i, node in enumerate(nodes):
        if len(node.inputs) != 1 or set(node.kwargs) - {"training"} or not isinstance(node.layer, Layer):
            continue
        j = only_reader(node)
        k = None if j is None else only_reader(nodes[j])
        if k is not None and conv_dense.types_fit(node.layer, nodes[j].layer, nodes[k].layer):
            groups[i] = (j, k)
    return groups


def _topological_nodes(inputs, outputs):
    """The nodes between inputs and outputs, each after the nodes it depends on. An output
    that needs a tensor which is not among the inputs raises ValueError naming it."""
    input_ids = {id(t) for t in inputs}
    order, state = [], {}

    def visit_tensor(t, path):
        if id(t) in input_ids:
            return
        if t.node is None:
            raise ValueError(f"Model: output {path!r} is not connected to the inputs: it depends on the input "
                             f"{t.name!r}, which is not in inputs= ({', '.join(x.name for x in inputs)})")
        visit_node(t.node, path)

    def visit_node(node, path):
        s = state.get(id(node))
        if s == 2:
            return
        if s == 1:
            raise ValueError("Model: the graph has a cycle")
        state[id(node)] = 1
        for t in node.inputs:
            visit_tensor(t, path)
        state[id(node)] = 2
        order.append(node)
    for t in outputs:
        visit_tensor(t, t.name)
    return order


Model._functional_cls = Functional
serialization.register(Functional)
serialization.register_alias("Model", Functional)   # tf.keras 2 and older files
