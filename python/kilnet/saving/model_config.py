"""A whole model as one config entry (the top of a .keras config.json), both ways.

    {"module", "class_name", "config", "registered_name", "build_config", "compile_config"}

Sequential and Functional models carry their layers in "config"; a subclassed model must be
registered (`register_keras_serializable`) and carry its constructor arguments
(`get_config`); it is rebuilt with `from_config` and built by calling it once on zeros of
`build_config["input_shape"]`, as Keras's build_from_config does.
"""
from __future__ import annotations

import math

import numpy as np

from kilnet import persistence, serialization
from kilnet.saving.errors import ModelFileError

__all__ = ["model_entry", "model_from_entry"]

_MAX_INPUT_ELEMENTS = 1 << 28
# The most layers a model config may hold, nested models included. Loading is linear in them
# (about 0.15 ms a layer), so this bounds its time to about 2 s; the largest Keras applications
# have about a thousand.
MAX_LAYERS = 10_000


def _count_layers(config, where):
    """The entries of every "layers" list in a config, refused beyond MAX_LAYERS (a file of tens
    of thousands of cheap layers, well under the JSON size cap, would take minutes to build)."""
    count, stack = 0, [config]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            layers = v.get("layers")
            if isinstance(layers, list):
                count += len(layers)
                if count > MAX_LAYERS:
                    raise ModelFileError(f"{where}: the model config holds more than {MAX_LAYERS} layers; refused")
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return count


def _is_structured(model):
    return hasattr(type(model), "_keras_module") and type(model).__name__ in ("Sequential", "Functional")


def model_entry(model, what="save"):
    cls = type(model)
    if not model.built:
        raise ValueError(f"{what}: the model is not built yet (give input_shape= or call fit/build first)")
    if _is_structured(model):
        entry = serialization.layer_entry(model)
        entry.pop("build_config", None)
        shape = model.input_shape if cls.__name__ == "Sequential" else None
        entry["build_config"] = {"input_shape": None if shape is None else list(shape)}
        return entry
    key = serialization.custom_name_of(cls)
    if key is None:
        raise ValueError(f"{what}: {cls.__name__} is a subclassed model that is not registered: decorate the "
                         "class with @kilnet.saving.register_keras_serializable() and give it get_config() "
                         "(its constructor arguments), or save the weights alone with "
                         "model.save_weights('x.weights.h5')")
    shape = model.input_shape
    if shape is None:
        raise ValueError(f"{what}: the subclassed model {model.name!r} has not been called yet; call it once "
                         "(or fit) so its input shape is known")
    config = model.get_config()
    if not isinstance(config, dict):
        raise ValueError(f"{what}: {cls.__name__}.get_config() must return a dict")
    return {"module": None, "class_name": cls.__name__, "config": config, "registered_name": key,
            "build_config": {"input_shape": _jsonable_shape(shape)}}


def _jsonable_shape(shape):
    if isinstance(shape, (list, tuple)) and shape and isinstance(shape[0], (list, tuple)):
        return [list(s) for s in shape]
    return list(shape)


def model_from_entry(entry, where, initialize=False):
    """A built model from its entry; classes resolve through kilnet.serialization only."""
    if not isinstance(entry, dict):
        raise ModelFileError(f"{where}: the model config is a {type(entry).__name__}, not an object")
    _count_layers(entry, where)
    persistence.ensure_builtin_classes()   # a load may come before any model was built here
    config = entry.get("config")
    if not isinstance(config, dict):
        raise ModelFileError(f"{where}: the model config has no 'config' object")
    try:
        cls = serialization.get_class(entry.get("class_name"), "model", entry.get("registered_name"))
    except ValueError as e:
        raise ModelFileError(f"{where}: {e}") from None
    if not getattr(cls, "_is_model_class", False):
        raise ModelFileError(f"{where}: the file's top object is a {entry.get('class_name')!r}, not a model")
    try:
        if _is_structured_cls(cls):
            model = cls.from_config(config, initialize=initialize)
        else:
            model = cls.from_config(dict(config))
            if not model.built:
                _build(model, (entry.get("build_config") or {}).get("input_shape"), where)
    except ModelFileError:
        raise
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise ModelFileError(f"{where}: cannot rebuild the model: {e}") from None
    return model


def _is_structured_cls(cls):
    return any(c.__name__ in ("Sequential", "Functional") and c.__module__.startswith("kilnet.")
               for c in cls.__mro__)


def _build(model, shape, where):
    """Call a subclassed model once on zeros so it creates its weights."""
    if shape is None:
        raise ModelFileError(f"{where}: the file does not say the subclassed model's input shape "
                             "(build_config.input_shape)")
    shapes = shape if isinstance(shape, list) and shape and isinstance(shape[0], list) else [shape]
    arrays = []
    for s in shapes:
        if not isinstance(s, list) or not s or any(d is not None and (not isinstance(d, int) or isinstance(d, bool)
                                                                          or d < 1) for d in s):
            raise ModelFileError(f"{where}: bad build input shape {shape!r}")
        dims = (1, *[1 if d is None else d for d in s[1:]])
        if math.prod(dims) > _MAX_INPUT_ELEMENTS:
            raise ModelFileError(f"{where}: absurd build input shape {shape!r}")
        arrays.append(np.zeros(dims, np.float32))
    model(arrays[0] if len(arrays) == 1 else arrays)
