"""`.keras` files: the zip archive Keras 3 writes (keras/src/saving/saving_lib.py).

    metadata.json      {"keras_version": "3.15.1", "date_saved": "2026-12-05@22:59:39"}
    config.json        the model entry (model_config.py) with "compile_config"
    model.weights.h5   the variables in Keras 3's layout (keras_weights.py), optimizer included
Members are stored uncompressed, in that order, as Keras writes them.

An archive is untrusted input. Before anything is inflated, every member's declared size is
checked against a cap (per member and in total) and its compression ratio against a bound; a
member whose name is absolute, holds '..' or a backslash, repeats another, is encrypted or is
not one of the names above is refused. config.json is bounded in size and nesting depth before
it is parsed, classes resolve only through kilnet's registry (never by importing a module the
file names), and nothing is extracted: members are read into memory, so nothing outside the
archive is read or written. Every refusal is a ModelFileError naming the problem.
"""
from __future__ import annotations

import datetime
import io
import json
import os
import zipfile

from kilnet import serialization
from kilnet.saving import h5_checks
from kilnet.saving.atomic import atomic_path
from kilnet.saving.compile_config import compile_config, restore_compile
from kilnet.weight_budget import weight_budget
from kilnet.saving.errors import ModelFileError
from kilnet.saving.keras_weights import read_weights, write_weights
from kilnet.saving.model_config import model_entry, model_from_entry

__all__ = ["save_model", "load_model", "load_weights_from_archive", "LIMITS"]

LAYOUT_KERAS_VERSION = "3.15.1"   # the Keras version whose layout this follows
_METADATA, _CONFIG, _WEIGHTS = "metadata.json", "config.json", "model.weights.h5"

# Caps, checked on the sizes the archive declares before anything is inflated. A member's
# inflated bytes never exceed its declared size (zipfile stops there and checks the CRC).
LIMITS = {
    "members": 64,                       # Keras writes 3 (plus assets/ for some layers)
    "metadata_bytes": 1 << 20,
    "config_bytes": 16 << 20,
    "config_depth": 200,                 # JSON nesting (a nested model adds about 10)
    "weights_bytes": 16 << 30,
    "total_bytes": 17 << 30,
    "ratio": 1000,                       # inflated / compressed size of one member
}


# ------------------------------------------------------------------------ save
def save_model(model, filepath, overwrite=True):
    entry = model_entry(model)
    cc = compile_config(model)
    if cc is not None:
        entry["compile_config"] = cc
    config_json = json.dumps(entry)
    from kilnet import __version__
    metadata_json = json.dumps({"keras_version": LAYOUT_KERAS_VERSION,
                                "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
                                "kilnet_version": __version__})
    weights = io.BytesIO()
    with h5_checks.h5py().File(weights, "w") as f:
        write_weights(f, model, include_optimizer=True)
    with atomic_path(filepath, overwrite) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr(_METADATA, metadata_json)
            zf.writestr(_CONFIG, config_json)
            zf.writestr(_WEIGHTS, weights.getvalue())


# ------------------------------------------------------------------------ load
def load_model(filepath, custom_objects=None, compile=True, safe_mode=True, allow_nonfinite=False):
    path = os.fspath(filepath)
    where = f"load_model: {path}"
    with _open(path, where) as zf:
        members = _check_members(zf, where)
        cfg = _read_json(zf, members, _CONFIG, LIMITS["config_bytes"], where)
        if _METADATA in members:
            meta = _read_json(zf, members, _METADATA, LIMITS["metadata_bytes"], where)
            if not isinstance(meta, dict):
                raise ModelFileError(f"{where}: metadata.json is not a JSON object")
        if _WEIGHTS not in members:
            raise ModelFileError(f"{where}: the archive has no {_WEIGHTS}"
                                 + (" (model.weights.npz is not supported)" if "model.weights.npz" in members else ""))
        try:
            with serialization.custom_objects_scope(custom_objects):
                # The weights member's size bounds what building the architecture may allocate
                # (kilnet/weight_budget.py): float32 values, 4 bytes each.
                with weight_budget(members[_WEIGHTS].file_size // 4, where):
                    model = model_from_entry(cfg, where)
                compiled = False
                if compile and isinstance(cfg, dict) and cfg.get("compile_config") is not None:
                    compiled = restore_compile(model, cfg["compile_config"], where)
        except (OverflowError, TypeError, RecursionError) as e:   # odd values in the config
            raise ModelFileError(f"{where}: the file holds values kilnet cannot use: {type(e).__name__}: {e}") from None
        except MemoryError:   # a structure the weight budget does not cover, too big for this machine
            raise ModelFileError(f"{where}: the model the file describes does not fit in memory") from None
        _read_weights_member(zf, members, model, where, load_optimizer=compiled, allow_nonfinite=allow_nonfinite)
    return model


def load_weights_from_archive(model, filepath, skip_mismatch=False, allow_nonfinite=False):
    """model.load_weights("m.keras"): the variables of a .keras file into a built model."""
    path = os.fspath(filepath)
    where = f"load_weights: {path}"
    with _open(path, where) as zf:
        members = _check_members(zf, where)
        if _WEIGHTS not in members:
            raise ModelFileError(f"{where}: the archive has no {_WEIGHTS}")
        _read_weights_member(zf, members, model, where, load_optimizer=False, allow_nonfinite=allow_nonfinite,
                             skip_mismatch=skip_mismatch)


def _open(path, where):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{where.split(':')[0]}: no such file: {path}")
    try:
        return zipfile.ZipFile(path, "r")
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise ModelFileError(f"{where} is not a readable .keras (zip) archive (truncated or corrupt?): {e}") from None


def _check_members(zf, where):
    """{name: ZipInfo} after checking every member's name, flags and declared sizes."""
    infos = zf.infolist()
    if len(infos) > LIMITS["members"]:
        raise ModelFileError(f"{where}: the archive has {len(infos)} members; refused (at most {LIMITS['members']})")
    members, total = {}, 0
    for info in infos:
        name = info.filename
        if not _safe_name(name):
            raise ModelFileError(f"{where}: archive member {name[:100]!r} has an unsafe name (absolute, '..', "
                                 "backslash or control characters); refused")
        if name in members:
            raise ModelFileError(f"{where}: archive member {name!r} appears twice; refused")
        if info.flag_bits & 0x1:
            raise ModelFileError(f"{where}: archive member {name!r} is encrypted; refused")
        if name not in (_METADATA, _CONFIG, _WEIGHTS, "model.weights.npz") and not name.startswith("assets/"):
            raise ModelFileError(f"{where}: unexpected archive member {name[:100]!r}; a .keras archive holds "
                                 f"{_METADATA}, {_CONFIG} and {_WEIGHTS}")
        cap = {_METADATA: LIMITS["metadata_bytes"], _CONFIG: LIMITS["config_bytes"]}.get(name, LIMITS["weights_bytes"])
        if info.file_size > cap:
            raise ModelFileError(f"{where}: archive member {name!r} declares {info.file_size} bytes; refused "
                                 f"(at most {cap})")
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > (1 << 20) and \
                info.file_size > LIMITS["ratio"] * max(info.compress_size, 1):
            raise ModelFileError(f"{where}: archive member {name!r} inflates {info.file_size / max(info.compress_size, 1):.0f}"
                                 "-fold (a zip bomb?); refused")
        total += info.file_size
        members[name] = info
    if total > LIMITS["total_bytes"]:
        raise ModelFileError(f"{where}: the archive declares {total} bytes in all; refused")
    if _CONFIG not in members:
        raise ModelFileError(f"{where}: the archive has no {_CONFIG}: not a Keras model archive")
    return members


def _safe_name(name):
    if not name or len(name) > 255 or name.startswith(("/", "\\")) or "\\" in name:
        return False
    if any(ord(c) < 32 or c == "\x7f" for c in name) or ":" in name:
        return False
    return all(part not in ("..", ".") for part in name.split("/"))


def _read(zf, info, cap, where):
    """A member's bytes, never more than its declared size nor the cap."""
    try:
        with zf.open(info, "r") as fh:
            data = fh.read(min(info.file_size, cap) + 1)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError) as e:
        raise ModelFileError(f"{where}: archive member {info.filename!r} is damaged: {e}") from None
    if len(data) > min(info.file_size, cap):
        raise ModelFileError(f"{where}: archive member {info.filename!r} is larger than it declares; refused")
    return data


def _read_json(zf, members, name, cap, where):
    raw = _read(zf, members[name], cap, where)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelFileError(f"{where}: {name} is not UTF-8 text") from None
    depth = _json_depth(text)
    if depth > LIMITS["config_depth"]:
        raise ModelFileError(f"{where}: {name} nests {depth} levels deep; refused (at most {LIMITS['config_depth']})")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ModelFileError(f"{where}: {name} is not valid JSON ({e})") from None


def _json_depth(text):
    """The deepest bracket nesting of a JSON text (strings skipped), without parsing it."""
    depth = deepest = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > LIMITS["config_depth"]:
                    return deepest
        elif ch in "]}":
            depth -= 1
    return deepest


def _read_weights_member(zf, members, model, where, load_optimizer, allow_nonfinite, skip_mismatch=False):
    data = _read(zf, members[_WEIGHTS], LIMITS["weights_bytes"], where)
    h5py = h5_checks.h5py()
    try:
        f = h5py.File(io.BytesIO(data), "r")
    except OSError as e:
        raise ModelFileError(f"{where}: {_WEIGHTS} is not a readable HDF5 file: {e}") from None
    with f:
        try:
            read_weights(f, model, where, skip_mismatch=skip_mismatch, allow_nonfinite=allow_nonfinite,
                         load_optimizer=load_optimizer)
        except (KeyError, OSError, RuntimeError) as e:   # h5py's errors on damaged structures
            raise ModelFileError(f"{where}: {_WEIGHTS} is damaged or incomplete: {e}") from None
