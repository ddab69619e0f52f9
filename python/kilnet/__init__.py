"""kilnet — a Keras-style deep-learning library on hand-written C++ and CUDA kernels.

Importing kilnet loads numpy and the compiled CPU kernels only; h5py, cupy, torch and the other
optional packages are imported when a feature needs them.
"""
from kilnet._version import __version__
from kilnet.backend import cuda_available, device, get_num_threads, set_num_threads, simd_level

__all__ = ["__version__", "get_num_threads", "set_num_threads", "simd_level", "cuda_available", "device",
           "models", "layers", "losses", "optimizers", "metrics", "initializers", "datasets",
           "utils", "Sequential", "load_model"]


def __getattr__(name):
    # Submodules and the two most used names load on first use, which keeps `import kilnet` fast.
    import importlib
    if name in ("models", "layers", "losses", "optimizers", "metrics", "initializers", "datasets",
                "utils", "callbacks", "io", "cli"):
        return importlib.import_module(f"kilnet.{name}")
    if name in ("Sequential", "load_model"):
        return getattr(importlib.import_module("kilnet.models"), name)
    raise AttributeError(f"module 'kilnet' has no attribute {name!r}")
