"""Configs: the types a model file may name, and Keras's serialized form of a layer.

The registry is an allowlist: the layer and model packages register their classes here when
they are imported, and loading resolves class names only through it (a file never names code).
This module imports no other part of kilnet, so layers, models and io can all use it.
"""
from __future__ import annotations

import inspect

__all__ = ["register", "get_class", "layer_entry", "known_args", "from_entry"]

_REGISTRY: dict = {}


def register(*classes) -> None:
    for cls in classes:
        _REGISTRY[cls.__name__] = cls


def get_class(class_name, kind="layer"):
    """The registered class of that name; ValueError listing the known ones otherwise."""
    cls = _REGISTRY.get(class_name) if isinstance(class_name, str) else None
    if cls is None:
        raise ValueError(f"unsupported {kind} type {class_name!r}; kilnet supports: {', '.join(sorted(_REGISTRY))}")
    return cls


def registered() -> dict:
    return dict(_REGISTRY)


def layer_entry(layer) -> dict:
    """{"module", "class_name", "config", "registered_name", "build_config"} as Keras writes it."""
    entry = {"module": "keras.layers", "class_name": type(layer).__name__, "config": layer.get_config(),
             "registered_name": None}
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
    cls = get_class(entry.get("class_name"))
    return cls.from_config(known_args(cls, dict(entry["config"])))
