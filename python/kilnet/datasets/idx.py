"""Reader for the IDX format of MNIST-style data sets (optionally gzip-compressed)."""
from __future__ import annotations

import gzip
import os

import numpy as np

__all__ = ["read_idx", "find_files", "load_pair"]

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read an IDX file (.gz or plain): magic 0x0000TTDD (T type, D rank), D big-endian sizes,
    then the data. Raises ValueError for a malformed or truncated file."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"cannot read IDX file {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[data[2]])
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if len(data) - header != count * dtype.itemsize:
        raise ValueError(f"{path}: expected {count * dtype.itemsize} data bytes for shape {shape}, "
                         f"found {len(data) - header} (truncated or corrupt)")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def search_dirs(name: str) -> list[str]:
    """Where a data set is looked for, in order: $KILNET_DATA (and $KILNET_DATA/<name>), the
    Debian package's folder /usr/share/datasets/<name>, then ~/.kilnet/datasets/<name>."""
    dirs = []
    env = os.environ.get("KILNET_DATA")
    if env:
        dirs += [os.path.join(env, name), env]
    dirs += [os.path.join("/usr/share/datasets", name),
             os.path.join(os.path.expanduser("~"), ".kilnet", "datasets", name)]
    return dirs


def find_files(name: str, files: list[str], how_to_get: str) -> list[str]:
    """The first folder holding all `files` (each as given or with/without .gz)."""
    dirs = search_dirs(name)
    for d in dirs:
        found = []
        for fn in files:
            for cand in (fn, fn + ".gz", fn[:-3] if fn.endswith(".gz") else None):
                if cand and os.path.isfile(os.path.join(d, cand)):
                    found.append(os.path.join(d, cand))
                    break
        if len(found) == len(files):
            return found
    raise FileNotFoundError(
        f"{name}: could not find {', '.join(files)} in any of: {', '.join(dirs)}. {how_to_get}")


def load_pair(name: str, how_to_get: str):
    """((x_train, y_train), (x_test, y_test)) for an MNIST-layout data set, as keras.datasets
    returns them: uint8 images (n, 28, 28) and uint8 labels (n,)."""
    files = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    xtr, ytr, xte, yte = (read_idx(p) for p in find_files(name, files, how_to_get))
    for x, y, part in ((xtr, ytr, "train"), (xte, yte, "test")):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"{name}: {part} images {x.shape} and labels {y.shape} do not match")
    return (xtr, ytr), (xte, yte)
