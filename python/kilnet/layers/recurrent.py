"""Recurrent layers — SimpleRNN, LSTM, GRU — and the TimeDistributed wrapper.

The whole sequence runs in one kernel call each way (kilnet._cpu.rnn_forward / rnn_backward):
each step's b + x_t W + h_{t-1} U is one register-tiled product followed by the gate math (the
GRU computes x W + b for all steps in one GEMM first), and backpropagation through time
accumulates the weight and bias gradients of all steps in one GEMM (two for the GRU). Weights have Keras's names, shapes and gate order, so Keras-trained weights load as they
are: kernel (in, G*units), recurrent_kernel (units, G*units), bias (G*units,) — GRU (2, 3*units)
— with gate blocks i, f, c, o (LSTM) and z, r, h (GRU, reset_after=True).

Masks follow Keras 3 (keras/src/backend/jax/rnn.py): `layer(x, mask=m)`, m (batch, timesteps)
bool; at a masked step the states are carried and the output is the previous h (0 with
zero_output_for_mask); the kernels do it, forward and backward. `compute_mask` says what mask
the output carries. return_state=True returns [output, h] ([output, h, c] for the LSTM), and the
states' gradients flow back through the same kernel call; so do initial_state's.
"""
from __future__ import annotations

import numpy as np

from kilnet import initializers, serialization
from kilnet.backend import to_device
from kilnet.engine.state import call_state
from kilnet.engine.tape import current_walk, record
from kilnet.engine.tensor import Tensor
from kilnet.layers.base import Layer
from kilnet.layers.core import _refuse_unsupported

__all__ = ["SimpleRNN", "LSTM", "GRU", "TimeDistributed"]

RNN_ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh")


def _rnn_activation(value, what, who):
    if value is None:
        return "linear"
    if callable(value) and getattr(value, "__name__", None) in RNN_ACTIVATIONS:
        return value.__name__
    name = value.lower() if isinstance(value, str) else value
    if name not in RNN_ACTIVATIONS:
        raise ValueError(f"{who}: {what}={value!r} is not supported; valid: {', '.join(RNN_ACTIVATIONS)}")
    return name


class _Recurrent(Layer):
    """What SimpleRNN, LSTM and GRU share: arguments, weights, the kernel calls."""

    _cell = ""          # the kernel's cell name
    _gates = 1          # G: gate blocks along the last axis of kernel and recurrent_kernel

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", kernel_regularizer=None, recurrent_regularizer=None,
                 bias_regularizer=None, activity_regularizer=None, kernel_constraint=None,
                 recurrent_constraint=None, bias_constraint=None, dropout=0.0, recurrent_dropout=0.0,
                 seed=None, return_sequences=False, return_state=False, go_backwards=False,
                 stateful=False, unroll=False, zero_output_for_mask=False, time_major=False,
                 implementation=None, use_cudnn="auto", **kwargs):
        super().__init__(**kwargs)
        who = f"{type(self).__name__} {self.name!r}"
        if not isinstance(units, (int, np.integer)) or isinstance(units, bool) or units < 1:
            raise ValueError(f"{who}: units must be a positive int, got {units!r}")
        _refuse_unsupported(self, kernel_regularizer=kernel_regularizer,
                            recurrent_regularizer=recurrent_regularizer, bias_regularizer=bias_regularizer,
                            activity_regularizer=activity_regularizer, kernel_constraint=kernel_constraint,
                            recurrent_constraint=recurrent_constraint, bias_constraint=bias_constraint)
        for arg, value in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
            if not isinstance(value, (int, float, np.floating, np.integer)) or isinstance(value, bool) \
                    or not 0.0 <= float(value) < 1.0:
                raise ValueError(f"{who}: {arg} must be a number in [0, 1), got {value!r}")
            if value:
                raise ValueError(f"{who}: {arg}={value!r} is not supported yet (only 0); "
                                 "put a Dropout layer between layers instead")
        if stateful:
            raise ValueError(f"{who}: stateful=True is not supported (every batch starts from zero state); "
                             "pass the states between calls with return_state=True and initial_state=")
        if time_major:
            raise ValueError(f"{who}: time_major=True is not supported; inputs are (batch, timesteps, features)")
        if use_cudnn not in ("auto", True, False):
            raise ValueError(f"{who}: use_cudnn must be 'auto', True or False, got {use_cudnn!r}")
        self.units = int(units)
        self.activation = _rnn_activation(activation, "activation", who)
        self.recurrent_activation = _rnn_activation(recurrent_activation, "recurrent_activation", who)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.recurrent_initializer = initializers.get(recurrent_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.seed = seed
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.stateful = False
        self.unroll = bool(unroll)                 # no effect: the kernel loops over time either way
        self.zero_output_for_mask = bool(zero_output_for_mask)   # masked steps output 0, not the last h
        self.supports_masking = True

    # ------------------------------------------------------------------ building
    def _bias_shape(self):
        return (self._gates * self.units,)

    def build(self, input_shape):
        if len(input_shape) != 3 and input_shape[0] is not None:   # an eager call on an array
            self._check_input(np.empty(tuple(input_shape), np.float32))
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(f"{type(self).__name__} {self.name!r}: expects inputs of shape (batch, "
                             f"timesteps, features) with known features, got {tuple(input_shape)}")
        gu = self._gates * self.units
        init = self._initialize
        self._add_weight("kernel", (input_shape[-1], gu), self.kernel_initializer, initialize=init)
        self._add_weight("recurrent_kernel", (self.units, gu), self.recurrent_initializer, initialize=init)
        if self.use_bias:
            self._add_weight("bias", self._bias_shape(), self.bias_initializer, initialize=init)

    @property
    def _n_states(self):
        return 2 if self._cell == "lstm" else 1

    def compute_output_shape(self, input_shape):
        if self.return_sequences:
            out = (input_shape[0], input_shape[1], self.units)
        else:
            out = (input_shape[0], self.units)
        if self.return_state:
            return [out] + [(input_shape[0], self.units)] * self._n_states
        return out

    def compute_mask(self, inputs, mask=None):
        """Keras's: the output keeps the input's mask with return_sequences, else has none
        (and the returned states have none)."""
        out = mask if self.return_sequences else None
        if self.return_state:
            return [out] + [None] * self._n_states
        return out

    # ------------------------------------------------------------------ compute
    def call(self, sequences, initial_state=None, mask=None, training=None):
        """One op on the tape (Keras 3's signature). initial_state: [h0] (SimpleRNN, GRU) or
        [h0, c0] (LSTM), each (batch, units), arrays or Tensors (gradients flow into Tensors);
        None = zeros. mask: (batch, timesteps) bool, True = use the step. Returns the output, or
        [output, h] / [output, h, c] with return_state."""
        return _recurrent_call(self, sequences, initial_state, mask, training)

    def _check_input(self, x):
        who = f"{type(self).__name__} {self.name!r}"
        if x.ndim != 3:
            raise ValueError(f"{who}: expects 3-D input (batch, timesteps, features), got shape {x.shape}"
                             + ("; for one sequence of features per sample, add a time axis"
                                if x.ndim == 2 else ""))
        if x.shape[1] == 0:
            raise ValueError(f"{who}: the sequence length (axis 1) must be at least 1, got input of shape {x.shape}")
        if x.shape[0] == 0:
            raise ValueError(f"{who}: the batch is empty (input of shape {x.shape})")
        if self.built and x.shape[2] != self.kernel.shape[0]:
            raise ValueError(f"{who}: was built for {self.kernel.shape[0]} features per step, got input "
                             f"of shape {x.shape}")

    def _initial_states(self, initial_state, batch):
        if initial_state is None:
            return None, None
        states = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
        n = 2 if self._cell == "lstm" else 1
        who = f"{type(self).__name__} {self.name!r}"
        if len(states) != n:
            raise ValueError(f"{who}: initial_state must hold {n} array(s) "
                             f"({'[h, c]' if n == 2 else '[h]'}), got {len(states)}")
        out = []
        for i, st in enumerate(states):
            st = self._xp.ascontiguousarray(st, dtype=np.float32)
            if st.shape != (batch, self.units):
                raise ValueError(f"{who}: initial_state[{i}] must have shape ({batch}, {self.units}), "
                                 f"got {st.shape}")
            out.append(st)
        return out[0], (out[1] if n == 2 else None)

    def _mask_array(self, mask, B, T):
        """The mask as the kernel takes it: float32 (B, T) on the layer's device, 1 = use the step."""
        if mask is None:
            return None
        who = f"{type(self).__name__} {self.name!r}"
        if isinstance(mask, Tensor):
            mask = mask.value
        if not hasattr(mask, "shape"):
            mask = np.asarray(mask)
        if getattr(mask, "dtype", None) is None or mask.dtype.kind not in "biuf":
            raise TypeError(f"{who}: mask must be a boolean array of shape (batch, timesteps), got "
                            f"{type(mask).__name__} of dtype {getattr(mask, 'dtype', None)}")
        if tuple(mask.shape) != (B, T):
            raise ValueError(f"{who}: mask must have shape (batch, timesteps) = ({B}, {T}) for inputs of "
                             f"shape ({B}, {T}, ...), got mask of shape {tuple(mask.shape)}")
        m = self._buffer("mask", (B, T))
        m[...] = to_device(mask, self.device) != 0
        return m

    def forward(self, x, training=False, initial_state=None, mask=None):
        self._check_input(x)
        x = self._xp.ascontiguousarray(x, dtype=np.float32)
        B, T, _ = x.shape
        h0, c0 = self._initial_states(initial_state, B)
        m = self._mask_array(mask, B, T)
        ws_n, _ = self._k.rnn_workspace_size(self._cell, B, T, x.shape[2], self.units)
        ws = self._buffer("ws", (ws_n,))
        y = self._buffer("y", (B, T, self.units) if self.return_sequences else (B, self.units))
        h_last = c_last = None
        if self.return_state:
            h_last = self._buffer("h_last", (B, self.units))
            c_last = self._buffer("c_last", (B, self.units)) if self._cell == "lstm" else None
        extra = {}
        if m is not None or h_last is not None:   # the plain call keeps the plain signature
            extra = dict(mask=m, zero_output_for_mask=self.zero_output_for_mask, h_last=h_last, c_last=c_last)
        self._k.rnn_forward(self._cell, x, self.kernel, self.recurrent_kernel, self.bias if self.use_bias else None,
                            y, ws, h0, c0, self.activation, self.recurrent_activation, self.go_backwards, **extra)
        st = self._state()
        st["x"], st["ws"], st["has_initial_state"], st["mask"] = x, ws, h0 is not None, m
        st["last_states"] = [s for s in (h_last, c_last) if s is not None]
        return y

    def backward(self, dy, need_dx=True, need_dw=True, d_states=None, need_d_initial=True):
        """dy: the output's gradient (None: zero); d_states: the returned states' gradients
        (return_state; None entries are zero). need_d_initial: compute initial_state_grads."""
        st = self._state()
        x, ws = st["x"], st["ws"]
        B, T, n_in = x.shape
        if dy is None:
            dy = self._buffer("dy0", (B, T, self.units) if self.return_sequences else (B, self.units))
            dy[...] = 0
        dy = self._xp.ascontiguousarray(dy, dtype=np.float32)
        _, scratch_n = self._k.rnn_workspace_size(self._cell, B, T, n_in, self.units)
        scratch = self._buffer("scratch", (scratch_n,))
        dx = self._buffer("dx", x.shape) if need_dx else None
        dw = du = db = None
        if need_dw and self.trainable:
            dw, du = self.dkernel, self.drecurrent_kernel
            db = self.dbias if self.use_bias else None
        dh0 = dc0 = None
        if st["has_initial_state"] and need_d_initial:   # gradients of the initial states
            dh0 = self._buffer("dh0", (B, self.units))
            dc0 = self._buffer("dc0", (B, self.units)) if self._cell == "lstm" else None
            st["initial_state_grads"] = [dh0] + ([dc0] if dc0 is not None else [])
        if dx is None and dw is None and dh0 is None:
            return None
        d_last = [None, None]
        for i, g in enumerate(d_states or ()):
            if g is not None:
                d_last[i] = self._xp.ascontiguousarray(g, dtype=np.float32)
        extra = {}
        if st["mask"] is not None or d_last[0] is not None or d_last[1] is not None:
            extra = dict(mask=st["mask"], zero_output_for_mask=self.zero_output_for_mask, dh_last=d_last[0],
                         dc_last=d_last[1] if self._cell == "lstm" else None)
        self._k.rnn_backward(self._cell, dy, x, self.kernel, self.recurrent_kernel, ws, scratch, dx, dw, du, db,
                             dh0, dc0, self.activation, self.recurrent_activation, self.go_backwards, **extra)
        return dx

    @property
    def keras_weight_scope(self):
        """Keras keeps the weights in the layer's cell: <model>/<layer>/<cell>/kernel (see io)."""
        return self._cell + "_cell"

    @property
    def initial_state_grads(self):
        """After backward of a call that passed initial_state: the gradients of those states."""
        return self._state().get("initial_state_grads")

    # ------------------------------------------------------------------ config
    def get_config(self):
        return {**super().get_config(), "return_sequences": self.return_sequences, "return_state": self.return_state,
                "go_backwards": self.go_backwards, "stateful": False, "unroll": self.unroll,
                "zero_output_for_mask": self.zero_output_for_mask, "units": self.units,
                "activation": self.activation, "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "recurrent_initializer": initializers.serialize(self.recurrent_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "kernel_regularizer": None, "recurrent_regularizer": None, "bias_regularizer": None,
                "activity_regularizer": None, "kernel_constraint": None, "recurrent_constraint": None,
                "bias_constraint": None, "dropout": 0.0, "recurrent_dropout": 0.0, "seed": self.seed}


def _state_tensor(layer, s):
    if isinstance(s, Tensor):
        return s if s.value.dtype == np.float32 else Tensor(s.value.astype(np.float32))
    if s is None or isinstance(s, (str, bytes)):
        raise TypeError(f"{type(layer).__name__} {layer.name!r}: initial_state entries must be arrays or "
                        f"tensors, got {s!r}")
    return Tensor(layer._xp.ascontiguousarray(to_device(np.asarray(s) if isinstance(s, (list, float, int))
                                                        else s, layer.device), dtype=np.float32))


def _recurrent_call(layer, x, initial_state, mask, training):
    """One call of a recurrent layer as one tape op: inputs x and the initial states (Tensors,
    so gradients reach them), outputs y and, with return_state, the final states. Its backward
    is one rnn_backward call given the gradients of all of them. (base.fused_call, with several
    inputs and outputs.)"""
    if not isinstance(x, Tensor):
        raise TypeError(f"layer {layer.name!r} takes one input tensor, got {type(x).__name__}")
    states = []
    if initial_state is not None:
        states = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
        states = [_state_tensor(layer, s) for s in states]
    st = call_state(layer)
    loc = layer._local
    prev = getattr(loc, "cur", None)
    loc.cur = st
    try:
        y = layer.forward(x.value, training, initial_state=[s.value for s in states] if states else None, mask=mask)
        outs = [Tensor(y)] + [Tensor(s) for s in st["last_states"]]
    finally:
        loc.cur = prev

    def bw(g, needs):
        g = list(g) if isinstance(g, (list, tuple)) else [g]
        prev = getattr(loc, "cur", None)
        loc.cur = st
        try:
            walk = current_walk()
            need_dw = walk is None or walk.need_dw(layer)
            need_states = any(needs[1:])
            dx = layer.backward(g[0], needs[0], need_dw, d_states=g[1:], need_d_initial=need_states)
            grads = st.get("initial_state_grads") if need_states else None
            return (dx, *(grads if grads else [None] * len(states)))
        finally:
            loc.cur = prev
    record((x, *states), tuple(outs), bw, layer)
    return outs if layer.return_state else outs[0]


class SimpleRNN(_Recurrent):
    """Fully connected RNN: h_t = activation(x_t · kernel + h_{t-1} · recurrent_kernel + bias).

    Args (Keras's): units, activation='tanh', use_bias=True, kernel_initializer='glorot_uniform',
    recurrent_initializer='orthogonal', bias_initializer='zeros', return_sequences=False,
    return_state=False, go_backwards=False, zero_output_for_mask=False.
    """

    _cell = "simple_rnn"
    _gates = 1

    def __init__(self, units, activation="tanh", **kwargs):
        if "recurrent_activation" in kwargs:
            raise TypeError("SimpleRNN: unexpected argument recurrent_activation")
        super().__init__(units, activation=activation, **kwargs)


class LSTM(_Recurrent):
    """Long short-term memory (Hochreiter 1997), Keras's gate order i, f, c, o.

    Args (Keras's): units, activation='tanh', recurrent_activation='sigmoid', use_bias=True,
    kernel_initializer='glorot_uniform', recurrent_initializer='orthogonal',
    bias_initializer='zeros', unit_forget_bias=True (the forget gate's bias starts at 1),
    return_sequences=False, return_state=False, go_backwards=False, zero_output_for_mask=False.
    """

    _cell = "lstm"
    _gates = 4

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", unit_forget_bias=True,
                 **kwargs):
        super().__init__(units, activation=activation, recurrent_activation=recurrent_activation, **kwargs)
        self.unit_forget_bias = bool(unit_forget_bias)

    def build(self, input_shape):
        super().build(input_shape)
        if self.use_bias and self.unit_forget_bias and self._initialize:
            self.bias[self.units:2 * self.units] = 1.0

    def get_config(self):
        return {**super().get_config(), "recurrent_activation": self.recurrent_activation,
                "unit_forget_bias": self.unit_forget_bias}


class GRU(_Recurrent):
    """Gated recurrent unit (Cho et al. 2014) in Keras's reset_after=True form, gates z, r, h:
    hh = activation(x·W_h + b_h + r ⊙ (h_{t-1}·U_h + b'_h)), h_t = z ⊙ h_{t-1} + (1 − z) ⊙ hh.
    The bias has shape (2, 3*units): [input bias; recurrent bias] (PyTorch's GRU layout too).

    Args (Keras's): units, activation='tanh', recurrent_activation='sigmoid', use_bias=True,
    kernel_initializer='glorot_uniform', recurrent_initializer='orthogonal',
    bias_initializer='zeros', reset_after=True (False is refused), return_sequences=False,
    return_state=False, go_backwards=False, zero_output_for_mask=False.
    """

    _cell = "gru"
    _gates = 3

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", reset_after=True, **kwargs):
        super().__init__(units, activation=activation, recurrent_activation=recurrent_activation, **kwargs)
        if not reset_after:
            raise ValueError(f"GRU {self.name!r}: reset_after=False (the Keras 2.2 / TF1 GRU variant) is not "
                             "supported; only reset_after=True, Keras's default")

    def _bias_shape(self):
        return (2, 3 * self.units)

    def get_config(self):
        return {**super().get_config(), "recurrent_activation": self.recurrent_activation, "reset_after": True}


class TimeDistributed(Layer):
    """Applies a layer to every time step: (batch, T, ...) -> (batch, T, ...) by running the
    layer on the (batch*T, ...) view. TimeDistributed(Dense(n)) is Dense on 3-D input.

    The wrapped layer's weights are the wrapper's (same names: kernel, bias), as in Keras.
    Accepts the layer or Keras's config form {"class_name": "Dense", "config": {...}}.
    """

    _WRAPPABLE = ("Dense", "Conv2D", "Flatten", "Activation")

    def __init__(self, layer, **kwargs):
        super().__init__(**kwargs)
        if isinstance(layer, dict):
            layer = serialization.from_entry(layer, f"TimeDistributed {self.name!r}")
        if not isinstance(layer, Layer) or type(layer).__name__ not in self._WRAPPABLE:
            raise ValueError(f"TimeDistributed {self.name!r}: can wrap {', '.join(self._WRAPPABLE)}, "
                             f"got {type(layer).__name__}")
        self.layer = layer

    # The wrapped layer's weights (and their gradients) are read and written through the wrapper,
    # so the model's flat parameter buffer and save/load see them as the wrapper's own.
    def _forwarded(self, name):
        inner = self.__dict__.get("layer")
        return inner is not None and any(name in (s.attr, "d" + s.attr) for s in inner._specs)

    def __getattr__(self, name):
        if not name.startswith("_") and self._forwarded(name):
            return getattr(self.__dict__["layer"], name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name, value):
        if not name.startswith("_") and name != "layer" and self._forwarded(name):
            setattr(self.layer, name, value)
        else:
            object.__setattr__(self, name, value)

    @property
    def keras_weight_scope(self):
        """Keras names the weights after the wrapped layer: <model>/<wrapper>/<layer>/kernel."""
        return self.layer.name

    def build(self, input_shape):
        if len(input_shape) < 3:
            raise ValueError(f"TimeDistributed {self.name!r}: expects inputs (batch, timesteps, ...), "
                             f"got shape {tuple(input_shape)}")
        if not self.layer.built:
            self.layer._build((None, *input_shape[2:]), initialize=self._initialize)
        self._specs = self.layer._specs

    def compute_output_shape(self, input_shape):
        inner = self.layer.compute_output_shape((None, *input_shape[2:]))
        return (input_shape[0], input_shape[1], *inner[1:])

    def forward(self, x, training=False):
        if x.ndim < 3:
            raise ValueError(f"TimeDistributed {self.name!r}: expects inputs (batch, timesteps, ...), "
                             f"got shape {x.shape}")
        B, T = x.shape[:2]
        self._state()["bt"] = (B, T)
        y = self.layer.forward(x.reshape(B * T, *x.shape[2:]), training)
        return y.reshape(B, T, *y.shape[1:])

    def backward(self, dy, need_dx=True, need_dw=True):
        B, T = self._state()["bt"]
        dx = self.layer.backward(dy.reshape(B * T, *dy.shape[2:]), need_dx, need_dw and self.trainable)
        return None if dx is None else dx.reshape(B, T, *dx.shape[1:])

    def get_config(self):
        return {**super().get_config(), "layer": serialization.layer_entry(self.layer)}
