"""Sequential: a linear stack of layers, as a chain of calls on the one engine."""
from __future__ import annotations

import math

from kilnet import dtype_policies, serialization
from kilnet.engine import fusion
from kilnet.engine.node import KerasTensor
from kilnet.layers import conv_dense
from kilnet.layers.base import Layer
from kilnet.layers.core import InputLayer
from kilnet.models.model import Model
from kilnet.naming import unique_name

__all__ = ["Sequential"]

_MAX_ELEMENTS = 1 << 31    # an input shape beyond this is refused as absurd


class Sequential(Model):
    """`Sequential([Conv2D(...), Flatten(), Dense(10)])`."""
    _keras_module = "keras"   # what Keras 3 writes in a file's "module"

    def __init__(self, layers=None, name=None, trainable=True):
        super().__init__(name=name or unique_name("sequential"), trainable=trainable)
        self.layers_list: list[Layer] = []
        self._layer_names: set[str] = set()   # add() checks names in O(1): building is linear in the layers
        self._declared_input = None
        self._auto_build = True   # build as soon as the input shape is known, as Keras does
        if layers is not None:
            if isinstance(layers, Layer):
                layers = [layers]
            # Built once at the end, not after every add: construction stays linear in the layers.
            self._auto_build = False
            try:
                for layer in layers:
                    self.add(layer)
            finally:
                self._auto_build = True
            if self.layers_list and self._declared_input is not None:
                self.build()

    @property
    def layers(self) -> list:
        return list(self.layers_list)

    # ------------------------------------------------------------------ structure
    def add(self, layer: Layer) -> None:
        """Append a layer (an InputLayer only declares the input shape)."""
        if isinstance(layer, KerasTensor):   # Sequential([kilnet.Input(shape), ...]) as in Keras 3
            if self.layers_list:
                raise ValueError("an Input can only come first in a Sequential model")
            self._declared_input = tuple(layer.shape[1:])
            return
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add expects a kilnet layer, got {type(layer).__name__}")
        if isinstance(layer, InputLayer):
            if self.layers_list:
                raise ValueError("an InputLayer can only come first in a Sequential model")
            self._declared_input = layer._input_shape
            return
        if layer.name in self._layer_names:
            raise ValueError(f"a layer named {layer.name!r} is already in the model; layer names must be unique")
        if not self.layers_list and layer._input_shape is not None:
            self._declared_input = layer._input_shape
        self.layers_list.append(layer)
        self._layer_names.add(layer.name)
        self.built = False
        if self._auto_build and self._declared_input is not None:
            self.build()

    def pop(self) -> Layer:
        if not self.layers_list:
            raise ValueError("pop: the model has no layers")
        self.built = False
        layer = self.layers_list.pop()
        self._layer_names.discard(layer.name)
        return layer

    def build(self, input_shape=None, initialize=True) -> None:
        """Create every layer's weights for inputs of shape (batch, *input_shape[1:]). Layers
        without a shape rule (custom call()) build on the first call instead."""
        if not self.layers_list:
            raise ValueError("the model has no layers; add some before building it")
        if input_shape is None:
            if self._declared_input is None:
                raise ValueError("the model does not know its input shape: pass input_shape= to the "
                                 "first layer, or call fit/predict (which build from the data)")
            input_shape = (None, *self._declared_input)
        shape = (None, *tuple(input_shape)[1:])
        for layer in self.layers_list:
            if shape is None:
                break
            if layer.built and layer.input_shape is not None and tuple(layer.input_shape[1:]) != tuple(shape[1:]):
                raise ValueError(f"layer {layer.name!r} was built for input {layer.input_shape} but now gets {shape}")
            shape = layer.output_shape if layer.built else layer._build(shape, initialize=initialize)
        self.input_shape = (None, *tuple(input_shape)[1:])
        self.built = True
        self._layout_key = None
        self._consolidate()
        if self.compiled is not None and not self.compiled.bound and self.output_shape is not None:
            self.compiled.bind(self)

    def _build(self, input_shape, initialize=True):
        self.build(input_shape, initialize)
        return self.output_shape

    @property
    def output_shape(self):
        if not self.built or not self.layers_list:
            return None
        return self.layers_list[-1].output_shape

    @output_shape.setter
    def output_shape(self, value):   # Layer.__init__ assigns it
        pass

    def call(self, inputs, training=None):
        h = inputs
        layers = self.layers_list
        if not fusion.allowed():
            for layer in layers:
                h = layer(h, training=training)
            return h
        # the trainer's step: Conv2D -> Flatten -> Dense runs on one fused kernel where it fits
        i, n = 0, len(layers)
        while i < n:
            layer = layers[i]
            if i + 2 < n and conv_dense.group_fits(layer, layers[i + 1], layers[i + 2]) \
                    and conv_dense.input_fits(h):
                h = conv_dense.call_group(layer, layers[i + 2], h)
                i += 3
                continue
            h = layer(h, training=training)
            i += 1
        return h

    # ------------------------------------------------------------------ what the trainer asks
    def _input_names(self):
        return ["input_layer"]

    def output_keys(self):
        return [self.layers_list[-1].name] if self.layers_list else None

    def _output_shapes(self):
        return None if self.output_shape is None else [self.output_shape]

    def _check_input_arrays(self, arrays, what):
        x = arrays[0]
        want = self.input_shape if self.built else (None, *self._declared_input) if self._declared_input else None
        if want is not None and tuple(x.shape[1:]) != tuple(want[1:]):
            raise ValueError(f"{what}: the model expects inputs of shape (batch, "
                             f"{', '.join(map(str, want[1:]))}), got {x.shape}")
        if not self.built:
            self.build((None, *x.shape[1:]))

    # ------------------------------------------------------------------ config
    @classmethod
    def from_config(cls, config, custom_objects=None, initialize=True):
        """A Sequential from its config (what get_config and Keras write): registered layer
        types, registered user classes and custom_objects only. initialize=False builds
        without drawing initial values (a loader sets the weights next, and the global random
        state is left untouched)."""
        with serialization.custom_objects_scope(custom_objects):
            return cls._from_config(config, initialize)

    @classmethod
    def _from_config(cls, config, initialize):
        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            raise ValueError("model_config has no layer list")
        name = config.get("name")
        model = cls(name=name if isinstance(name, str) and name and "/" not in name else None,
                    trainable=bool(config.get("trainable", True)))
        model._auto_build = False   # built below, once
        if config.get("dtype") is not None:   # the model's own policy (compile's loss scaling reads it)
            try:
                model.dtype_policy = config["dtype"]
            except ValueError as e:
                raise ValueError(f"model {name!r}: {e}") from None
        for entry in config["layers"]:
            if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
                raise ValueError(f"malformed layer entry {str(entry)[:100]!r}")
            try:
                layer = serialization.from_entry(entry, "Sequential")
            except (TypeError, ValueError) as e:
                raise ValueError(f"layer {entry['config'].get('name', '?')!r} ({entry.get('class_name')}) has "
                                 f"an invalid or unsupported config: {e}") from None
            model.add(layer)
        model._auto_build = True
        if not model.layers_list:
            raise ValueError("the model has no layers")
        input_shape = config.get("build_input_shape")
        if input_shape is None and model._declared_input:
            input_shape = (None, *model._declared_input)
        if input_shape is None:
            raise ValueError("the file does not say the model's input shape")
        try:
            shape = (None, *[int(s) for s in list(input_shape)[1:]])
        except (TypeError, ValueError):
            raise ValueError(f"bad input shape {input_shape!r}") from None
        if any(s < 1 for s in shape[1:]) or math.prod(shape[1:]) > _MAX_ELEMENTS:
            raise ValueError(f"absurd input shape {input_shape!r}")
        model.build(shape, initialize=initialize)
        return model

    def get_config(self) -> dict:
        layer_entry = serialization.layer_entry
        entries = []
        if self.built or self._declared_input is not None:
            shape = self.input_shape if self.built else (None, *self._declared_input)
            entries.append({"module": "keras.layers", "class_name": "InputLayer",
                            "config": {"batch_shape": list(shape), "dtype": self._input_dtype(), "sparse": False,
                                       "name": "input_layer"}, "registered_name": None})
        entries += [layer_entry(l) for l in self.layers_list]
        cfg = {"name": self.name, "trainable": self.trainable,
               "dtype": dtype_policies.serialize(self.dtype_policy), "layers": entries}
        if self.built:
            cfg["build_input_shape"] = list(self.input_shape)
        return cfg

    def _input_dtype(self) -> str:
        """What the model's InputLayer holds as Keras writes it: int32 ids for a first layer
        that takes integer ids (Embedding), else float32."""
        return "int32" if self.layers_list and self.layers_list[0]._int_inputs else "float32"

    def export_weights(self, filepath) -> None:
        """Write layers and weights in the binary format C++ programs read (kilnet/export.py)."""
        from kilnet.export import export_weights
        export_weights(self, filepath)


serialization.register(Sequential)
