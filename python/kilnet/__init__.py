"""kilnet — a Keras-style deep-learning library on hand-written C++ and CUDA kernels.

Importing kilnet loads numpy and the compiled CPU kernels only; h5py, cupy, torch and the other
optional packages are imported when a feature needs them. The Keras names (Model, Sequential,
Input, layers, ops, ...) load on first use, which keeps `import kilnet` fast.
"""
from kilnet._version import __version__
from kilnet.backend import cuda_available, device, get_num_threads, set_num_threads, simd_level
from kilnet import persistence as _persistence

# The root knows every part: it tells the models where the saving code is, and the loaders where
# kilnet's classes are, so that neither imports the other (kilnet/persistence.py).
_persistence.install("kilnet.saving.saving_api", ("kilnet.layers", "kilnet.models"))

__all__ = ["__version__", "get_num_threads", "set_num_threads", "simd_level", "cuda_available", "device",
           "models", "layers", "losses", "optimizers", "metrics", "initializers", "datasets", "ops",
           "utils", "callbacks", "regularizers", "schedules", "explain", "mixed_precision", "dtype_policies",
           "Sequential", "Model", "Input",
           "load_model", "GradientTape", "Tensor", "Variable"]

_SUBMODULES = ("models", "layers", "losses", "optimizers", "metrics", "initializers", "datasets", "ops",
               "utils", "callbacks", "io", "cli", "regularizers", "schedules", "explain", "activations", "saving",
               "privacy", "fairness", "mixed_precision", "dtype_policies")
_NAMES = {"Sequential": "kilnet.models", "Model": "kilnet.models", "load_model": "kilnet.models",
          "Input": "kilnet.engine.node", "GradientTape": "kilnet.engine.tape",
          "Tensor": "kilnet.engine.tensor", "Variable": "kilnet.engine.tensor",
          "KerasTensor": "kilnet.engine.node", "DTypePolicy": "kilnet.dtype_policies"}


def __getattr__(name):
    import importlib
    if name in _SUBMODULES:
        return importlib.import_module(f"kilnet.{name}")
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'kilnet' has no attribute {name!r}")
