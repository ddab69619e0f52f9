"""Layer: the base class every kilnet layer derives from.

A layer owns its forward and backward (there is no autograd tape):
  build(input_shape)           creates the weights (add_weight)
  forward(x, training)         computes y and keeps what backward needs
  backward(dy, need_dx=True, need_dw=True)
                               returns dx (None when not need_dx) and, when need_dw and the
                               layer is trainable, ACCUMULATES the weight gradients d<name>;
                               need_dw=False (input gradients for explanations) leaves every
                               d<name> untouched

Weights are plain float32 arrays held as attributes (self.kernel, self.bias); their gradients are
attributes named with a leading d (self.dkernel). A Sequential model moves every trainable weight
into one contiguous buffer and its gradient into another (views replace the attributes), so the
optimizer updates all parameters in one kernel call.

Buffers that forward/backward write are kept per thread and reused across batches: the training
step allocates no array memory in steady state, and predict can run from several threads.
"""
from __future__ import annotations

import itertools
import threading
from collections import defaultdict

import numpy as np

from kilnet import _cpu, initializers
from kilnet.backend import to_device, xp_of_device
from kilnet.utils import snake_case

__all__ = ["Layer", "reset_name_counters"]

_name_counters: dict = defaultdict(itertools.count)
_name_lock = threading.Lock()


def unique_name(base: str) -> str:
    with _name_lock:
        i = next(_name_counters[base])
    return base if i == 0 else f"{base}_{i}"


def reset_name_counters() -> None:
    """Restart automatic layer names (conv2d, conv2d_1, ...), like keras.backend.clear_session."""
    with _name_lock:
        _name_counters.clear()


class WeightSpec:
    __slots__ = ("attr", "shape", "initializer", "trainable")

    def __init__(self, attr, shape, initializer, trainable):
        self.attr, self.shape, self.initializer, self.trainable = attr, shape, initializer, trainable


class Layer:
    # The device the layer's weights and buffers live on: kernels come from _k (kilnet._cpu or
    # kilnet._cuda), arrays from _xp (numpy or cupy). Sequential.to(device) moves a model.
    device = "cpu"
    _k = _cpu
    _xp = np

    # Keras keys every layer config may carry; anything else a subclass does not accept is refused.
    _common_config_keys = ("name", "trainable", "dtype", "input_shape", "batch_input_shape",
                           "batch_size")

    def __init__(self, name=None, trainable=True, input_shape=None, batch_input_shape=None,
                 dtype=None, batch_size=None, **kwargs):
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unexpected argument(s) {', '.join(sorted(kwargs))}")
        if dtype is not None and _dtype_name(dtype) != "float32":
            raise ValueError(f"{type(self).__name__}: kilnet computes in float32; dtype={dtype!r} is not supported")
        if name is not None and (not isinstance(name, str) or not name or "/" in name):
            raise ValueError(f"layer name must be a non-empty string without '/', got {name!r}")
        self.name = name or unique_name(snake_case(type(self).__name__))
        self.trainable = bool(trainable)
        if batch_input_shape is not None:
            input_shape = tuple(batch_input_shape)[1:]
        self._input_shape = _check_shape(input_shape, self.name) if input_shape is not None else None
        self.built = False
        self.input_shape = None
        self.output_shape = None
        self._specs: list[WeightSpec] = []
        self._local = threading.local()

    # ------------------------------------------------------------------ building
    def add_weight(self, attr, shape, initializer="zeros", trainable=True, initialize=True):
        """Create the weight `self.<attr>` (and its gradient `self.d<attr>` when trainable)."""
        init = initializers.get(initializer)
        shape = tuple(int(s) for s in shape)
        value = init(shape) if initialize else np.zeros(shape, np.float32)
        setattr(self, attr, np.ascontiguousarray(value, dtype=np.float32))
        if trainable:
            setattr(self, "d" + attr, np.zeros(shape, np.float32))
        self._specs.append(WeightSpec(attr, shape, init, trainable))
        return getattr(self, attr)

    def build(self, input_shape):
        """Create weights for inputs of shape (None, *input_shape[1:])."""

    def _build(self, input_shape, initialize=True):
        input_shape = tuple(input_shape)
        self._initialize = initialize
        self.build(input_shape)
        self.input_shape = input_shape
        self.output_shape = tuple(self.compute_output_shape(input_shape))
        self.built = True
        return self.output_shape

    def compute_output_shape(self, input_shape):
        return input_shape

    # ------------------------------------------------------------------ compute
    def forward(self, x, training=False):
        raise NotImplementedError

    def backward(self, dy, need_dx=True, need_dw=True):
        raise NotImplementedError

    def __call__(self, x, training=False):
        """Run forward on a numpy array (building the layer on first use); returns a copy."""
        from kilnet.utils import to_float32
        x = to_float32(x)
        if not self.built:
            self._build((None,) + x.shape[1:])
        if self.device != "cpu":
            return self.forward(to_device(x, self.device), training).copy()
        return np.array(self.forward(x, training))

    # Per-thread state: what forward keeps for backward, and reusable buffers.
    def _state(self) -> dict:
        return self._local.__dict__

    def _move_to(self, dev):
        """Put the layer on `dev`: its weights (those outside a model's flat buffer, which the
        model moves itself), gradients and kernels; per-thread buffers are dropped."""
        from kilnet.backend import cuda_module
        for s in self._specs:
            setattr(self, s.attr, to_device(getattr(self, s.attr), dev))
            if s.trainable and hasattr(self, "d" + s.attr):
                setattr(self, "d" + s.attr, to_device(getattr(self, "d" + s.attr), dev))
        self.device = dev
        self._k = cuda_module() if dev == "cuda" else _cpu
        self._xp = xp_of_device(dev)
        self._local = threading.local()

    def _buffer(self, key, shape):
        """A float32 array of `shape` that this layer reuses across calls (per thread). A smaller
        leading dimension (the last partial batch) gets a view of the existing buffer."""
        st = self._local.__dict__
        buf = st.get(("buf", key))
        if buf is None or buf.shape[1:] != shape[1:] or buf.shape[0] < shape[0]:
            buf = self._xp.empty(shape, np.float32)
            st[("buf", key)] = buf
        return buf if buf.shape[0] == shape[0] else buf[: shape[0]]

    # ------------------------------------------------------------------ weights
    @property
    def weights(self) -> list:
        return [getattr(self, s.attr) for s in self._specs]

    @property
    def trainable_weights(self) -> list:
        return [getattr(self, s.attr) for s in self._specs if s.trainable] if self.trainable else []

    @property
    def non_trainable_weights(self) -> list:
        return [getattr(self, s.attr) for s in self._specs if not (s.trainable and self.trainable)]

    def count_params(self) -> int:
        return int(sum(int(np.prod(s.shape)) for s in self._specs))

    def get_weights(self) -> list:
        return [_host_copy(getattr(self, s.attr)) for s in self._specs]

    def set_weights(self, weights) -> None:
        """Copy values into the existing weight arrays, checking count, shape and finiteness."""
        weights = list(weights)
        if len(weights) != len(self._specs):
            raise ValueError(f"layer {self.name!r} expects {len(self._specs)} weight arrays "
                             f"({', '.join(s.attr for s in self._specs) or 'none'}), got {len(weights)}")
        converted = []
        for spec, w in zip(self._specs, weights):
            w = np.asarray(w)
            if w.dtype.kind not in "fiu":
                raise TypeError(f"layer {self.name!r}: weight {spec.attr!r} must be numeric, got {w.dtype}")
            if tuple(w.shape) != spec.shape:
                raise ValueError(f"layer {self.name!r}: weight {spec.attr!r} must have shape "
                                 f"{spec.shape}, got {tuple(w.shape)}")
            converted.append(w)
        for spec, w in zip(self._specs, converted):
            dst = getattr(self, spec.attr)
            if isinstance(dst, np.ndarray):
                np.copyto(dst, w, casting="unsafe")
            else:   # on the GPU: one host-to-device copy into the existing array
                dst.set(np.ascontiguousarray(w, dtype=np.float32))

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict:
        return {"name": self.name, "trainable": self.trainable,
                "dtype": {"module": "keras", "class_name": "DTypePolicy",
                          "config": {"name": "float32"}, "registered_name": None}}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r}>"


def _host_copy(a):
    """A numpy copy of a weight wherever it lives."""
    if isinstance(a, np.ndarray):
        return np.array(a)
    return a.get()


def _dtype_name(dtype) -> str:
    if isinstance(dtype, dict):  # Keras 3 DTypePolicy
        return str((dtype.get("config") or {}).get("name", ""))
    try:
        return np.dtype(dtype).name
    except TypeError:
        return str(dtype)


def _check_shape(shape, who):
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"{who}: input_shape must be a tuple of ints, got {shape!r}") from None
    for s in shape:
        if s is not None and (not isinstance(s, (int, np.integer)) or isinstance(s, bool) or s < 1):
            raise ValueError(f"{who}: input_shape must hold positive ints, got {shape!r}")
    return tuple(None if s is None else int(s) for s in shape)


def normalize_tuple(value, n, name, who):
    """Keras's conv argument form: an int or a tuple of n positive ints."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value),) * n
    try:
        value = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{who}: {name} must be an int or a tuple of {n} ints, got {value!r}") from None
    if len(value) != n or any(v < 1 for v in value):
        raise ValueError(f"{who}: {name} must be {n} positive ints, got {value!r}")
    return value
