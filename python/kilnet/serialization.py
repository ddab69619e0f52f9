"""Configs: the types a model file may name, and Keras's serialized form of a layer.

The registry is an allowlist: the layer and model packages register their classes here when
they are imported, and loading resolves class names only through it (a file never names code).
Three tables are consulted, in Keras's order: the `custom_objects` of the load in progress (a
thread-local scope), the user classes registered with
`kilnet.saving.register_keras_serializable` (keyed "package>Name"), then kilnet's own classes.
A `module` field in a file is never imported. This module imports no other part of kilnet, so
layers, models and io can all use it.
"""
from __future__ import annotations

import inspect
import threading

__all__ = ["register", "register_alias", "get_class", "layer_entry", "known_args", "from_entry",
           "register_custom", "custom_name_of", "custom_objects_scope", "active_custom_objects"]

_REGISTRY: dict = {}
_CUSTOM: dict = {}            # "package>Name" -> class (register_keras_serializable)
_CUSTOM_NAMES: dict = {}      # class -> "package>Name"


class _Scope(threading.local):
    stack: tuple = ()         # the custom_objects dicts of the loads in progress, innermost last


_scope = _Scope()

# Classes that carry Python code in their config: refused by name, whatever else the file says.
_CODE_CARRIERS = {"Lambda": "a Lambda layer holds Python code (marshalled bytecode or a function name)",
                  "TFOpLambda": "a TFOpLambda layer calls a TensorFlow function named in the file",
                  "SlicingOpLambda": "a SlicingOpLambda layer calls a TensorFlow function named in the file"}


def register(*classes) -> None:
    for cls in classes:
        _REGISTRY[cls.__name__] = cls


def register_alias(name, cls) -> None:
    """Another class name files use for a kilnet class (tf.keras 2 writes "Model" for Functional)."""
    _REGISTRY[name] = cls


def register_custom(key, cls) -> None:
    _CUSTOM[key] = cls
    _CUSTOM_NAMES[cls] = key


def custom_name_of(cls):
    """The "package>Name" a user class was registered under, or None."""
    return _CUSTOM_NAMES.get(cls)


def registered_custom() -> dict:
    return dict(_CUSTOM)


class custom_objects_scope:
    """`with custom_objects_scope({"MyLayer": MyLayer}):` class names resolve to these first."""

    def __init__(self, objects):
        self.objects = dict(objects or {})

    def __enter__(self):
        _scope.stack = _scope.stack + (self.objects,)
        return self

    def __exit__(self, *exc):
        _scope.stack = _scope.stack[:-1]


def active_custom_objects() -> dict:
    out = {}
    for d in _scope.stack:
        out.update(d)
    return out


def get_class(class_name, kind="layer", registered_name=None):
    """The class a config names: custom_objects in scope, then registered user classes (by
    registered_name "package>Name", or by class name), then kilnet's registry. Never imports
    anything; ValueError listing the known ones otherwise."""
    if not isinstance(class_name, str) or len(class_name) > 200:
        raise ValueError(f"unsupported {kind} type {str(class_name)[:80]!r}: a class name must be a string")
    if class_name in _CODE_CARRIERS:
        raise ValueError(f"unsupported {kind} type {class_name!r}, refused: {_CODE_CARRIERS[class_name]}, and "
                         "kilnet never loads code from a file; rebuild that part in Python and load the weights")
    scoped = active_custom_objects()
    for key in (registered_name, class_name):
        if isinstance(key, str) and key in scoped:
            return _as_class(scoped[key], key)
    if isinstance(registered_name, str) and registered_name in _CUSTOM:
        return _CUSTOM[registered_name]
    if class_name in _CUSTOM:
        return _CUSTOM[class_name]
    cls = _REGISTRY.get(class_name)
    if cls is None:
        short = [k.split(">", 1)[1] for k in _CUSTOM if ">" in k]
        hits = [k for k, c in _CUSTOM.items() if c.__name__ == class_name or k.split(">")[-1] == class_name]
        if hits:
            return _CUSTOM[hits[0]]
        known = sorted(set(_REGISTRY) | set(short) | set(scoped))
        raise ValueError(f"unsupported {kind} type {class_name!r}"
                         + (f" (registered_name {registered_name!r})" if registered_name else "")
                         + "; kilnet resolves classes only from its own registry, classes registered with "
                         "kilnet.saving.register_keras_serializable() and custom_objects=; known: "
                         + ", ".join(known))
    return cls


def _as_class(obj, key):
    if not isinstance(obj, type):
        raise ValueError(f"custom_objects[{key!r}] must be a class, got {type(obj).__name__}")
    return obj


def registered() -> dict:
    return dict(_REGISTRY)


def layer_entry(layer) -> dict:
    """{"module", "class_name", "config", "registered_name", "build_config"} as Keras writes it
    (a registered user class: module None, registered_name "package>Name", as Keras 3 writes
    classes defined in a script)."""
    custom = custom_name_of(type(layer))
    module = None if custom else getattr(type(layer), "_keras_module", "keras.layers")
    entry = {"module": module, "class_name": type(layer).__name__, "config": layer.get_config(),
             "registered_name": custom or getattr(type(layer), "_keras_registered_name", None)}
    if layer.built and layer.input_shape is not None:
        entry["build_config"] = {"input_shape": list(layer.input_shape)}
    return entry


def known_args(cls, config):
    """Drop config keys the class does not take when their value is an inert default (None,
    False, empty), as newer Keras versions add such keys (quantization_config, ...). A key with
    a real value that kilnet does not implement is kept, so the constructor refuses it by name."""
    accepted = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            accepted |= {p.name for p in inspect.signature(init).parameters.values()
                         if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in config.items() if k in accepted or v not in (None, False, [], {})}


def from_entry(entry, who):
    """A layer from its entry {"class_name": ..., "config": {...}}, registered types only."""
    if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
        raise ValueError(f"{who}: malformed layer entry {str(entry)[:100]!r}")
    cls = get_class(entry.get("class_name"), registered_name=entry.get("registered_name"))
    if getattr(cls, "_is_model_class", False):   # a nested model: its from_config reads its layers
        return cls.from_config(dict(entry["config"]))
    if custom_name_of(cls) is not None or cls in active_custom_objects().values():
        return cls.from_config(dict(entry["config"]))   # user classes get their config as written
    return cls.from_config(known_args(cls, dict(entry["config"])))
