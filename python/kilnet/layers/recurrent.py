"""Recurrent layers — SimpleRNN, LSTM, GRU — and the TimeDistributed wrapper.

The whole sequence runs in one kernel call each way (kilnet._cpu.rnn_forward / rnn_backward):
each step's b + x_t W + h_{t-1} U is one register-tiled product followed by the gate math (the
GRU computes x W + b for all steps in one GEMM first), and backpropagation through time
accumulates the weight and bias gradients of all steps in one GEMM (two for the GRU). Weights have Keras's names, shapes and gate order, so Keras-trained weights load as they
are: kernel (in, G*units), recurrent_kernel (units, G*units), bias (G*units,) — GRU (2, 3*units)
— with gate blocks i, f, c, o (LSTM) and z, r, h (GRU, reset_after=True).
"""
from __future__ import annotations

import numpy as np

from kilnet import initializers, serialization
from kilnet.engine.tensor import Tensor
from kilnet.layers.base import Layer, fused_call
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
        if return_state:
            raise ValueError(f"{who}: return_state=True gives several outputs, which a Sequential model "
                             "cannot pass on; use return_state=False")
        if stateful:
            raise ValueError(f"{who}: stateful=True is not supported (every batch starts from zero state)")
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
        self.go_backwards = bool(go_backwards)
        self.unroll = bool(unroll)                 # no effect: the kernel loops over time either way
        self.zero_output_for_mask = bool(zero_output_for_mask)   # no masks here: no effect

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

    def compute_output_shape(self, input_shape):
        if self.return_sequences:
            return (input_shape[0], input_shape[1], self.units)
        return (input_shape[0], self.units)

    # ------------------------------------------------------------------ compute
    def call(self, inputs, training=None, initial_state=None):
        """One op on the tape. initial_state: [h0] (SimpleRNN, GRU) or [h0, c0] (LSTM), each
        (batch, units); None = zeros (constants: no gradient flows into them here)."""
        if initial_state is not None:
            states = initial_state if isinstance(initial_state, (list, tuple)) else [initial_state]
            initial_state = [s.value if isinstance(s, Tensor) else s for s in states]
            return fused_call(self, inputs, training, initial_state=initial_state)
        return fused_call(self, inputs, training)

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

    def forward(self, x, training=False, initial_state=None):
        self._check_input(x)
        x = self._xp.ascontiguousarray(x, dtype=np.float32)
        B, T, _ = x.shape
        h0, c0 = self._initial_states(initial_state, B)
        ws_n, _ = self._k.rnn_workspace_size(self._cell, B, T, x.shape[2], self.units)
        ws = self._buffer("ws", (ws_n,))
        y = self._buffer("y", (B, T, self.units) if self.return_sequences else (B, self.units))
        self._k.rnn_forward(self._cell, x, self.kernel, self.recurrent_kernel, self.bias if self.use_bias else None,
                         y, ws, h0, c0, self.activation, self.recurrent_activation, self.go_backwards)
        st = self._state()
        st["x"], st["ws"], st["has_initial_state"] = x, ws, h0 is not None
        return y

    def backward(self, dy, need_dx=True, need_dw=True):
        st = self._state()
        x, ws = st["x"], st["ws"]
        B, T, n_in = x.shape
        dy = self._xp.ascontiguousarray(dy, dtype=np.float32)
        _, scratch_n = self._k.rnn_workspace_size(self._cell, B, T, n_in, self.units)
        scratch = self._buffer("scratch", (scratch_n,))
        dx = self._buffer("dx", x.shape) if need_dx else None
        dw = du = db = None
        if need_dw and self.trainable:
            dw, du = self.dkernel, self.drecurrent_kernel
            db = self.dbias if self.use_bias else None
        dh0 = dc0 = None
        if st["has_initial_state"]:   # gradients of the initial states, for direct calls
            dh0 = self._buffer("dh0", (B, self.units))
            dc0 = self._buffer("dc0", (B, self.units)) if self._cell == "lstm" else None
            st["initial_state_grads"] = [dh0] + ([dc0] if dc0 is not None else [])
        if dx is None and dw is None and dh0 is None:
            return None
        self._k.rnn_backward(self._cell, dy, x, self.kernel, self.recurrent_kernel, ws, scratch, dx, dw, du, db,
                          dh0, dc0, self.activation, self.recurrent_activation, self.go_backwards)
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
        return {**super().get_config(), "return_sequences": self.return_sequences, "return_state": False,
                "go_backwards": self.go_backwards, "stateful": False, "unroll": self.unroll,
                "zero_output_for_mask": self.zero_output_for_mask, "units": self.units,
                "activation": self.activation, "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "recurrent_initializer": initializers.serialize(self.recurrent_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer),
                "kernel_regularizer": None, "recurrent_regularizer": None, "bias_regularizer": None,
                "activity_regularizer": None, "kernel_constraint": None, "recurrent_constraint": None,
                "bias_constraint": None, "dropout": 0.0, "recurrent_dropout": 0.0, "seed": self.seed}


class SimpleRNN(_Recurrent):
    """Fully connected RNN: h_t = activation(x_t · kernel + h_{t-1} · recurrent_kernel + bias).

    Args (Keras's): units, activation='tanh', use_bias=True, kernel_initializer='glorot_uniform',
    recurrent_initializer='orthogonal', bias_initializer='zeros', return_sequences=False,
    return_state=False (True is refused), go_backwards=False.
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
    return_sequences=False, return_state=False (True is refused), go_backwards=False.
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
    return_state=False (True is refused), go_backwards=False.
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
