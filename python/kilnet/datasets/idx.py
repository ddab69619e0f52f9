"""Reader for the IDX format of MNIST-style data sets (optionally gzip-compressed)."""
from __future__ import annotations

import gzip
import os

import numpy as np

__all__ = ["read_idx", "find_files", "load_pair"]

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# The largest data a file may declare: the biggest IDX sets (EMNIST) are well under this, and
# reading is bounded by it, so a small compressed file cannot make us inflate gigabytes.
MAX_IDX_BYTES = 2 << 30


def read_idx(path, max_bytes=MAX_IDX_BYTES) -> np.ndarray:
    """Read an IDX file (.gz or plain): magic 0x0000TTDD (T type, D rank), D big-endian sizes,
    then the data. The header is read first; a declared size over max_bytes, or data that does
    not match the declared size, raises ValueError before more than that is read."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _DTYPES:
                raise ValueError(f"{path} is not an IDX file (bad magic number)")
            ndim = head[3]
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise ValueError(f"{path}: truncated IDX header")
            shape = tuple(int.from_bytes(dims[4 * i: 4 * i + 4], "big") for i in range(ndim))
            dtype = np.dtype(_DTYPES[head[2]])
            count = 1
            for d in shape:   # Python ints: no overflow
                count *= d
            nbytes = count * dtype.itemsize
            if nbytes > max_bytes:
                raise ValueError(f"{path}: the header declares {nbytes} bytes of data (shape {shape}), over the "
                                 f"limit of {max_bytes}; not an IDX file kilnet reads")
            data = f.read(nbytes + 1)   # one byte more: trailing data means a corrupt file
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise ValueError(f"cannot read IDX file {path}: {e}") from None
    if len(data) != nbytes:
        raise ValueError(f"{path}: expected {nbytes} data bytes for shape {shape}, found "
                         f"{len(data) if len(data) <= nbytes else 'more'} (truncated or corrupt)")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def search_dirs(name: str) -> list[str]:
    """Where a data set is looked for, in order: $KILNET_DATA (and $KILNET_DATA/<name>), the
    Debian package's folder /usr/share/datasets/<name>, then ~/.kilnet/datasets/<name>."""
    dirs = []
    env = os.environ.get("KILNET_DATA")
    if env and os.path.isdir(env):
        dirs += [os.path.join(env, name), env]
    elif env:
        import warnings
        warnings.warn(f"KILNET_DATA={env!r} is not a directory; ignored", RuntimeWarning, stacklevel=3)
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
