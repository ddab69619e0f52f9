"""Where the model classes reach the saving code, and loaders reach the model classes, without
importing each other.

kilnet.saving sits above kilnet.models: it builds models from files, so it uses the model
classes (through kilnet.serialization's registry). The Keras API also puts entry points on the
models themselves (`Model.save`, `save_weights`, `load_weights`, `kilnet.models.load_model`),
which would be an import back up. The package root (kilnet/__init__.py), which knows every part,
installs both directions here at `import kilnet`; each is a module imported on first use, so
`import kilnet` stays fast. This module imports nothing of kilnet."""
from __future__ import annotations

import importlib

__all__ = ["install", "saving_api", "ensure_builtin_classes"]

_SAVING_MODULE = None        # the module with save_model / load_model / save_weights / load_weights
_CLASS_MODULES: tuple = ()   # modules whose import registers kilnet's layer and model classes


def install(saving_module, class_modules) -> None:
    """Called once by the package root with module names (strings)."""
    global _SAVING_MODULE, _CLASS_MODULES
    _SAVING_MODULE, _CLASS_MODULES = saving_module, tuple(class_modules)


def saving_api():
    """The saving entry points (kilnet.saving.saving_api)."""
    if _SAVING_MODULE is None:
        raise RuntimeError("kilnet.persistence: the saving code is not installed (import kilnet first)")
    return importlib.import_module(_SAVING_MODULE)


def ensure_builtin_classes() -> None:
    """Make sure kilnet's own layer and model classes are in the registry before a config is
    resolved (a load may come before any model was built in this process)."""
    for name in _CLASS_MODULES:
        importlib.import_module(name)
