"""User classes a model file may name: `@kilnet.saving.register_keras_serializable()`.

As in Keras 3, a registered class is written as {"module": null, "class_name": "MyModel",
"registered_name": "package>MyModel", "config": <its get_config()>} and rebuilt with its
from_config. Registration (or `custom_objects=` at load time) is the only way a file reaches
user code: kilnet never imports a module a file names.
"""
from __future__ import annotations

from kilnet import serialization

__all__ = ["register_keras_serializable", "get_registered_name", "get_registered_object",
           "custom_object_scope", "CustomObjectScope", "get_custom_objects"]


def register_keras_serializable(package="Custom", name=None):
    """Class decorator: register the class under "package>name" (name: the class name), so
    model files may name it. The class needs get_config() (and from_config() if its
    constructor does not take get_config()'s keys)."""
    if not isinstance(package, str) or not package or ">" in package:
        raise ValueError(f"register_keras_serializable: package must be a non-empty string without '>', "
                         f"got {package!r}")

    def decorator(cls):
        if not isinstance(cls, type):
            raise TypeError("register_keras_serializable decorates classes (layers, models) in kilnet")
        key = f"{package}>{name or cls.__name__}"
        if "get_config" not in dir(cls):
            raise ValueError(f"register_keras_serializable: {cls.__name__} must define get_config()")
        serialization.register_custom(key, cls)
        return cls
    return decorator


def get_registered_name(obj):
    cls = obj if isinstance(obj, type) else type(obj)
    return serialization.custom_name_of(cls) or cls.__name__


def get_registered_object(name, custom_objects=None, module_objects=None):
    """The class registered (or passed in custom_objects) under `name`, or None."""
    for table in (custom_objects or {}, serialization.active_custom_objects(), serialization.registered_custom(),
                  module_objects or {}):
        if name in table:
            return table[name]
    return None


def get_custom_objects() -> dict:
    """A copy of the registered user classes ("package>Name" -> class)."""
    return serialization.registered_custom()


class CustomObjectScope(serialization.custom_objects_scope):
    """`with kilnet.saving.CustomObjectScope({"MyLayer": MyLayer}): load_model(...)`."""


custom_object_scope = CustomObjectScope
