"""Reading HDF5 groups and datasets from files kilnet does not trust (.h5, .weights.h5, the
weights inside a .keras archive): hard links only (no soft or external links), datasets whose
data lives in the file itself (no external or virtual storage), numeric, of the shape the
architecture needs, of sane size, finite unless asked. h5py is imported here on first use."""
from __future__ import annotations

import math

import numpy as np

from kilnet.saving.errors import ModelFileError

__all__ = ["h5py", "hard_group", "read_dataset", "stored_elements", "MAX_WEIGHT_ELEMENTS"]

MAX_WEIGHT_ELEMENTS = 1 << 31      # a single weight larger than this is refused as absurd
MAX_DATASETS = 1 << 20             # datasets in one file's weight groups
# A compressed dataset may declare at most this times its stored bytes (real weights compress
# about 1.1:1; deflate can reach 1032:1 on constant data, which would let a small file make
# kilnet allocate a thousand times its size).
MAX_COMPRESSION = 64


def h5py():
    try:
        import h5py as _h5py
    except ImportError as e:  # pragma: no cover - h5py is a dependency
        raise ImportError("saving and loading models needs h5py: pip install h5py") from e
    return _h5py


def hard_group(parent, name, where):
    """parent[name] as a group reached by a hard link; ModelFileError otherwise."""
    h5 = h5py()
    link = parent.get(name, getlink=True)
    if link is None:
        raise ModelFileError(f"{where}: missing group {name!r}")
    if not isinstance(link, h5.HardLink):
        raise ModelFileError(f"{where}: {name!r} is a {type(link).__name__}; links are refused")
    g = parent[name]
    if not isinstance(g, h5.Group):
        raise ModelFileError(f"{where}: {name!r} is not a group")
    return g


def read_dataset(group, name, shape, where, allow_nonfinite=False):
    """One weight as float32 (a scalar counter as an exact number), checked as above.
    shape None: any shape (the caller checks)."""
    h5 = h5py()
    parts = name.split("/")
    g = group
    for p in parts[:-1]:
        g = hard_group(g, p, where)
    link = g.get(parts[-1], getlink=True)
    if link is None:
        raise ModelFileError(f"{where}: weight {name!r} is missing")
    if not isinstance(link, h5.HardLink):
        raise ModelFileError(f"{where}: weight {name!r} is a {type(link).__name__}; links are refused")
    ds = g[parts[-1]]
    if not isinstance(ds, h5.Dataset):
        raise ModelFileError(f"{where}: {name!r} is not a dataset")
    if ds.external or ds.is_virtual:
        raise ModelFileError(f"{where}: weight {name!r} uses external or virtual storage; refused")
    if math.prod(ds.shape or ()) > MAX_WEIGHT_ELEMENTS:
        raise ModelFileError(f"{where}: weight {name!r} claims {math.prod(ds.shape)} elements; refused")
    if shape is not None and tuple(ds.shape) != tuple(shape):
        raise ModelFileError(f"{where}: weight {name!r} has shape {tuple(ds.shape)}, "
                             f"the architecture needs {tuple(shape)}")
    if ds.dtype.kind not in "fiu":
        raise ModelFileError(f"{where}: weight {name!r} has non-numeric dtype {ds.dtype}")
    if ds.shape == ():   # a counter (the optimizer's iteration) or a scalar weight: keep it exact
        value = ds[()]
        if ds.dtype.kind == "f" and not np.isfinite(value):
            raise ModelFileError(f"{where}: {name!r} is not finite")
        return value
    value = np.asarray(ds[()], dtype=np.float32)
    if not allow_nonfinite and not np.isfinite(value).all():
        raise ModelFileError(f"{where}: weight {name!r} contains NaN or Inf "
                             "(pass allow_nonfinite=True to load it anyway)")
    return value


def _check_storage(ds, name, where):
    """A dataset's declared size must agree with the bytes it stores: refuses a dataset that
    declares 10**9 values and stores none (HDF5 would read fill values), before reading it."""
    declared = math.prod(ds.shape or ()) * ds.dtype.itemsize
    if math.prod(ds.shape or ()) > MAX_WEIGHT_ELEMENTS:
        raise ModelFileError(f"{where}: weight {name!r} claims {math.prod(ds.shape)} elements; refused")
    stored = ds.id.get_storage_size()
    filtered = ds.compression is not None or bool(getattr(ds, "_filters", None))
    # Unfiltered data takes its full size (unwritten chunks or a never-written contiguous dataset
    # read as fill values); compressed data at most MAX_COMPRESSION times less.
    short = declared > stored * MAX_COMPRESSION + 4096 if filtered else declared > stored
    if declared > 0 and short:
        raise ModelFileError(f"{where}: dataset {name!r} declares {declared} bytes but stores {stored}; refused")
    return declared // max(ds.dtype.itemsize, 1)


def stored_elements(group, where):
    """The number of values in the numeric datasets under `group` (hard links only, data in
    the file), each checked against its storage (_check_storage): the most weights a loader
    may allocate for this file (kilnet.weight_budget)."""
    h5 = h5py()
    total, count, stack = 0, 0, [(group, "")]
    while stack:
        g, prefix = stack.pop()
        for key in g:
            link = g.get(key, getlink=True)
            if not isinstance(link, h5.HardLink):
                continue   # links are refused where they are read
            obj = g[key]
            count += 1
            if count > MAX_DATASETS:
                raise ModelFileError(f"{where}: more than {MAX_DATASETS} objects in the weights; refused")
            if isinstance(obj, h5.Group):
                stack.append((obj, f"{prefix}{key}/"))
            elif isinstance(obj, h5.Dataset) and obj.dtype.kind in "fiu" and not (obj.external or obj.is_virtual):
                total += _check_storage(obj, prefix + key, where)
    return total
