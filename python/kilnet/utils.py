"""Small helpers: the global random generator, input conversion, Keras-style name lookup."""
from __future__ import annotations

import random as _pyrandom

import numpy as np

__all__ = ["set_random_seed", "get_rng", "to_float32", "lookup", "snake_case", "to_categorical", "PyDataset",
           "image_dataset_from_directory", "blas_threads"]

_rng = np.random.default_rng()


def set_random_seed(seed: int) -> None:
    """Seed everything kilnet draws from (initializers, shuffling, dropout) and Python's and
    numpy's global generators, so that a run is repeatable (as keras.utils.set_random_seed)."""
    global _rng
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"set_random_seed: seed must be an int, got {type(seed).__name__}")
    _rng = np.random.default_rng(int(seed))
    _pyrandom.seed(int(seed))
    np.random.seed(int(seed) % 2**32)


def get_rng() -> np.random.Generator:
    """The generator behind every random draw kilnet makes."""
    return _rng


def to_float32(x, name: str = "x") -> np.ndarray:
    """Convert model input the way Keras does: numbers become a C-contiguous float32 array.

    Raises TypeError for strings, objects and other non-numeric data, ValueError for empty input.
    """
    if isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.c_contiguous:
        arr = x
    else:
        arr = as_numpy(x, name)
        if arr.dtype.kind not in "fiub":
            raise TypeError(f"{name} must be numeric, got an array of dtype {arr.dtype}"
                            + (" (strings)" if arr.dtype.kind in "US" else ""))
        with np.errstate(over="ignore"):   # too large for float32 becomes inf, refused by the caller
            arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape}); need at least one sample")
    return arr


def as_numpy(x, name="x") -> np.ndarray:
    """Any array-like as a numpy array without copying where possible: numpy arrays, lists,
    objects with __array__ (torch CPU tensors, pandas), DLPack producers (__dlpack__), and CuPy
    arrays (copied to the host)."""
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.startswith("cupy"):
        return x.get()
    if hasattr(x, "__array__"):
        return np.asarray(x)
    if hasattr(x, "__dlpack__"):
        try:
            return np.from_dlpack(x)
        except (TypeError, RuntimeError, BufferError) as e:
            raise TypeError(f"{name}: cannot read this {type(x).__name__} through DLPack on the CPU ({e})") from None
    if isinstance(x, (list, tuple)):
        return np.asarray(x)
    raise TypeError(f"{name} must be array-like (numpy, a list, or anything with __array__ or "
                    f"__dlpack__), got {type(x).__name__}")


def snake_case(name: str) -> str:
    """'Conv2D' -> 'conv2d', 'MaxPooling2D' -> 'max_pooling2d' (Keras's naming)."""
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i > 0 and (name[i - 1].islower() or
                                       (i + 1 < len(name) and name[i + 1].islower())):
            if not name[i - 1].isdigit():
                out.append("_")
        out.append(ch.lower())
    return "".join(out)


def lookup(kind: str, registry: dict, identifier):
    """Resolve a Keras-style string identifier through a registry, or raise ValueError listing
    the valid names."""
    key = identifier
    if isinstance(identifier, str) and identifier not in registry:
        key = identifier.lower()
    if key not in registry:
        valid = ", ".join(sorted(k for k in registry if isinstance(k, str)))
        raise ValueError(f"unknown {kind} {identifier!r}; valid names: {valid}")
    return registry[key]


def to_categorical(x, num_classes=None):
    """Class indices to one-hot rows (float32), as keras.utils.to_categorical: the last axis of
    size 1 is replaced by num_classes (default: max index + 1)."""
    y = np.asarray(x)
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or (y != np.round(y)).any():
            raise ValueError("to_categorical: x must hold whole class indices")
    elif y.dtype.kind not in "iub":
        raise TypeError(f"to_categorical: x must hold class indices, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.ndim > 1 and y.shape[-1] == 1:
        y = y.reshape(y.shape[:-1])
    if y.size and y.min() < 0:
        raise ValueError(f"to_categorical: negative class index {int(y.min())}")
    n = int(num_classes) if num_classes is not None else (int(y.max()) + 1 if y.size else 0)
    if y.size and y.max() >= n:
        raise ValueError(f"to_categorical: class index {int(y.max())} is out of range for num_classes={n}")
    out = np.zeros(y.shape + (n,), np.float32)
    np.put_along_axis(out, y[..., None], 1.0, axis=-1)
    return out


# Data pipelines (their own modules; here for the keras.utils names).
from kilnet.py_dataset import PyDataset  # noqa: E402
from kilnet.image_dataset import image_dataset_from_directory  # noqa: E402
# Other libraries' BLAS pools next to kilnet's threads (issue 23).
from kilnet.blas_threads import blas_threads  # noqa: E402
