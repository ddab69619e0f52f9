"""save_model / load_model / save_weights / load_weights: the format follows the file name, as
in Keras 3.

    .keras                  the zip archive (keras_archive.py)
    .h5 / .hdf5             the legacy HDF5 model file (saving/legacy_h5.py, public as kilnet.io)
    .weights.h5             weights alone in Keras 3's layout (keras_weights.py)
load_weights also reads a .keras archive's weights and legacy .h5 weights (by_name,
skip_mismatch), telling the two HDF5 layouts apart by their content.
"""
from __future__ import annotations

import os

from kilnet.saving.errors import ModelFileError

__all__ = ["save_model", "load_model", "save_weights", "load_weights"]


def _suffix(path):
    p = path.lower()
    if p.endswith(".weights.h5"):
        return ".weights.h5"
    for s in (".keras", ".h5", ".hdf5"):
        if p.endswith(s):
            return s
    return os.path.splitext(p)[1]


def save_model(model, filepath, overwrite=True, zipped=None, include_optimizer=True, **kwargs):
    """`model.save(path)`: a .keras archive or a legacy .h5 file, chosen by the suffix."""
    for k in ("save_format", "signatures", "options"):
        kwargs.pop(k, None)
    if kwargs:
        raise TypeError(f"save_model: unexpected argument(s) {', '.join(sorted(kwargs))}")
    path = os.fspath(filepath)
    suffix = _suffix(path)
    if suffix == ".keras":
        if zipped is False:
            raise ValueError("save_model: zipped=False (an unzipped folder) is not supported; save to .keras")
        from kilnet.saving import keras_archive
        keras_archive.save_model(model, path, overwrite=overwrite)
    elif suffix in (".h5", ".hdf5") and suffix != ".weights.h5":
        from kilnet.saving import legacy_h5 as io
        io.save_model(model, path, overwrite=overwrite, include_optimizer=include_optimizer)
    else:
        raise ValueError(f"Invalid filepath extension for saving: {path!r}. Add a `.keras` extension for the "
                         "native Keras format (recommended) or a `.h5` extension for the legacy HDF5 format "
                         "(weights alone: model.save_weights('x.weights.h5'))")


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True, allow_nonfinite=False):
    """A model from a .keras archive or a legacy .h5 file (kilnet's, Keras 3's or tf.keras 2's).
    Classes resolve from kilnet's registry, classes registered with
    register_keras_serializable() and custom_objects; nothing in a file is imported or run
    (safe_mode=False changes nothing: kilnet never deserializes code)."""
    path = os.fspath(filepath)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load_model: no such file: {path}")
    if custom_objects is not None and not isinstance(custom_objects, dict):
        raise TypeError("load_model: custom_objects must be a dict {name: class}")
    kind = _sniff(path) or {".keras": "zip", ".h5": "h5", ".hdf5": "h5", ".weights.h5": "h5"}.get(_suffix(path))
    if kind == "zip":
        from kilnet.saving import keras_archive
        return keras_archive.load_model(path, custom_objects=custom_objects, compile=compile,
                                        safe_mode=safe_mode, allow_nonfinite=allow_nonfinite)
    if kind == "h5":
        from kilnet.saving import legacy_h5 as io
        return io.load_model(path, compile=compile, allow_nonfinite=allow_nonfinite, custom_objects=custom_objects)
    raise ModelFileError(f"load_model: {path} is neither a .keras (zip) archive nor an HDF5 (.h5) file")


def save_weights(model, filepath, overwrite=True, max_shard_size=None):
    """`model.save_weights(path)`: `.weights.h5` in Keras 3's layout; `.h5` in the legacy layout."""
    if max_shard_size is not None:
        raise ValueError("save_weights: sharded weights (max_shard_size) are not supported")
    path = os.fspath(filepath)
    suffix = _suffix(path)
    if suffix == ".weights.h5":
        if not model.built:
            raise ValueError("save_weights: the model is not built yet")
        from kilnet.saving import h5_checks
        from kilnet.saving.atomic import atomic_path
        from kilnet.saving.keras_weights import write_weights
        with atomic_path(path, overwrite, "save_weights") as tmp:
            with h5_checks.h5py().File(tmp, "w") as f:
                write_weights(f, model, include_optimizer=False)
    elif suffix in (".h5", ".hdf5"):
        from kilnet.saving import legacy_h5 as io
        io.save_model(model, path, overwrite=overwrite, include_optimizer=False, weights_only=True)
    else:
        raise ValueError(f"save_weights: the file name must end in `.weights.h5` (Keras 3's layout) or `.h5`, "
                         f"got {path!r}")


def load_weights(model, filepath, skip_mismatch=False, by_name=False, allow_nonfinite=False):
    """Weights into a built model from a .weights.h5, a .keras archive or a legacy .h5 file.
    by_name (legacy .h5 only) matches layers by name instead of position; skip_mismatch skips
    layers whose weights disagree in number or shape (with a warning)."""
    path = os.fspath(filepath)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load_weights: no such file: {path}")
    if not model.built:
        model.build()
    kind = _sniff(path) or {".keras": "zip", ".h5": "h5", ".hdf5": "h5", ".weights.h5": "h5"}.get(_suffix(path))
    if kind == "zip":
        if by_name:
            raise ValueError("load_weights: by_name=True applies to legacy .h5 files only")
        from kilnet.saving import keras_archive
        keras_archive.load_weights_from_archive(model, path, skip_mismatch, allow_nonfinite)
        return
    if kind != "h5":
        raise ModelFileError(f"load_weights: {path} is neither an HDF5 weights file nor a .keras archive")
    from kilnet.saving import h5_checks
    try:
        f = h5_checks.h5py().File(path, "r")
    except OSError as e:
        raise ModelFileError(f"load_weights: {path} is not a readable HDF5 file: {e}") from None
    with f:
        legacy = "model_weights" in f or "layer_names" in f.attrs
        if legacy:
            from kilnet.saving import legacy_h5 as io
            io.read_legacy_weights(f, model, f"load_weights: {path}", allow_nonfinite, by_name=by_name,
                                   skip_mismatch=skip_mismatch)
            return
        if by_name:
            raise ValueError("load_weights: by_name=True applies to legacy .h5 files only (Keras 3 matches "
                             ".weights.h5 files by structure)")
        from kilnet.saving.keras_weights import read_weights
        try:
            read_weights(f, model, f"load_weights: {path}", skip_mismatch=skip_mismatch,
                         allow_nonfinite=allow_nonfinite)
        except (KeyError, OSError, RuntimeError) as e:
            raise ModelFileError(f"load_weights: {path} is damaged or incomplete: {e}") from None


def _sniff(path):
    """'zip', 'h5' or None, from the file's first bytes (the suffix may lie)."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(b"PK"):
        return "zip"
    if head == b"\x89HDF\r\n\x1a\n":
        return "h5"
    if len(head) < 8:
        return None
    from kilnet.saving import h5_checks   # HDF5 with a user block: the signature sits further on
    return "h5" if h5_checks.h5py().is_hdf5(path) else None
