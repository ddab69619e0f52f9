"""`model.export_weights(path)`: a Sequential model's layers and weights in a small binary file
that C and C++ programs read without Python or HDF5 (examples/cpp/infer.cpp reads it and runs
the model with kilnet's C++ kernels; docs/cpp.md).

Format, version 1. Every number is little-endian: u32 = uint32, i64 = int64, f32 = float32.

    header   magic            8 bytes  b"KILNETW\\0"
             version          u32      1
             n_layers         u32
             input_rank       u32      rank of one sample (without the batch axis)
             input_shape      i64[input_rank]
    layer    type             u32      a code of LAYER_TYPES
    (n_layers name_len        u32
     times)  name             name_len bytes of UTF-8
             n_config         u32
             config           i64[n_config]  (per type, below)
             n_weights        u32
             weight           rank u32, shape i64[rank], data f32[prod(shape)] in C order
             (n_weights times)

    type          config                                               weights
    1 Dense       units, activation, use_bias                          kernel (in, units), [bias (units,)]
    2 Conv2D      filters, kh, kw, stride_h, stride_w, dilation_h,     kernel (kh, kw, in, filters),
                  dilation_w, padding (0 valid, 1 same), pad_top,      [bias (filters,)]
                  pad_left, out_h, out_w, activation, use_bias
    3 Flatten     (none)
    4 Activation  activation

Activation codes are kilnet::Act's (and the C API's KILNET_ACT_*): 0 linear, 1 relu, 2 sigmoid,
3 tanh, 4 softmax (along the last axis). A Conv2D's pad_top/pad_left and out_h/out_w are what
the kernels take (kilnet::Conv2dShape pad_h, pad_w, P, Q) for the model's input size. An
InputLayer is not a layer of the file: it only declares input_shape. Dense acts on the last
axis (any leading axes are rows). Any other layer type is refused at export time.
"""
from __future__ import annotations

import os
import secrets
import struct

import numpy as np

__all__ = ["export_weights", "MAGIC", "VERSION", "LAYER_TYPES", "ACTIVATION_CODES"]

MAGIC = b"KILNETW\0"
VERSION = 1
LAYER_TYPES = {"Dense": 1, "Conv2D": 2, "Flatten": 3, "Activation": 4}
ACTIVATION_CODES = {"linear": 0, "relu": 1, "sigmoid": 2, "tanh": 3, "softmax": 4}


def _layer_config(layer) -> list:
    """The type's config integers (see the module docstring)."""
    kind = type(layer).__name__
    if kind == "Dense":
        return [layer.units, ACTIVATION_CODES[layer.activation], int(layer.use_bias)]
    if kind == "Conv2D":
        return [layer.filters, *layer.kernel_size, *layer.strides, *layer.dilation_rate,
                0 if layer.padding == "valid" else 1, *layer._pad, *layer._pq,
                ACTIVATION_CODES[layer.activation], int(layer.use_bias)]
    if kind == "Activation":
        return [ACTIVATION_CODES[layer.activation]]
    return []   # Flatten


def _check_exportable(model) -> None:
    from kilnet.layers import Activation, Conv2D, Dense, Flatten
    exact = (Dense, Conv2D, Flatten, Activation)
    for layer in model.layers:
        # Exact types: a subclass may compute something else than the C++ program would.
        if type(layer) not in exact:
            raise ValueError(f"export_weights: layer {layer.name!r} of type {type(layer).__name__} cannot be "
                             f"exported; the weights format supports {', '.join(LAYER_TYPES)} (and InputLayer)")


def _encode(model) -> bytes:
    out = [MAGIC, struct.pack("<II", VERSION, len(model.layers))]
    in_shape = tuple(model.input_shape[1:])
    out.append(struct.pack(f"<I{len(in_shape)}q", len(in_shape), *in_shape))
    for layer in model.layers:
        name = layer.name.encode("utf-8")
        config = [int(v) for v in _layer_config(layer)]
        weights = layer.get_weights()
        out.append(struct.pack(f"<II{len(name)}sI{len(config)}qI", LAYER_TYPES[type(layer).__name__],
                               len(name), name, len(config), *config, len(weights)))
        for w in weights:
            w = np.ascontiguousarray(w, dtype="<f4")
            out.append(struct.pack(f"<I{w.ndim}q", w.ndim, *w.shape))
            out.append(w.tobytes())
    return b"".join(out)


def export_weights(model, filepath) -> None:
    """Write `model` (a built Sequential of Dense, Conv2D, Flatten and Activation layers) to
    `filepath` in the format above. Written to a temporary file and renamed, so a crash never
    leaves a half file."""
    # by name: export sits above models (Sequential.export_weights calls it)
    if not any(c.__name__ == "Sequential" for c in type(model).__mro__):
        raise TypeError(f"export_weights: expects a kilnet Sequential model, got {type(model).__name__}")
    if not model.layers:
        raise ValueError("export_weights: the model has no layers")
    if not model.built or model.input_shape is None or None in tuple(model.input_shape[1:]):
        raise ValueError("export_weights: build the model first (give input_shape= to the first layer, "
                         "call model.build(input_shape), fit or predict)")
    _check_exportable(model)
    data = _encode(model)
    filepath = os.fspath(filepath)
    directory = os.path.dirname(os.path.abspath(filepath))
    # O_EXCL on a fresh random name, mode 0666 less the umask (mkstemp's 0600 would surprise
    # whoever reads the file later).
    tmp = os.path.join(directory, f".{os.path.basename(filepath)}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())   # the bytes are on disk before the rename makes them visible
        os.replace(tmp, filepath)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
