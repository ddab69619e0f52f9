"""Bidirectional: runs a recurrent layer over the sequence forwards and a copy of it backwards,
and merges the two outputs, as Keras 3's keras.layers.Bidirectional.

- The wrapper holds two sub-layers, `forward_layer` (named forward_<name>) and `backward_layer`
  (backward_<name>, go_backwards=True), each rebuilt from the given layer's config (fresh
  weights, as Keras); or `backward_layer=` is used as given.
- get_weights() is the forward layer's weights then the backward layer's; in a .h5 file they are
  <model>/<bidirectional>/forward_lstm/lstm_cell/kernel, ... (Keras 3's variable paths).
- With return_sequences the backward layer's output is flipped back to the input's time order
  before merging; merge_mode "concat" (default), "sum", "mul", "ave" or None (a list of both).
- With return_sequences the sub-layers output 0 at masked steps (Keras forces
  zero_output_for_mask = return_sequences on both).
- return_state: [output, *forward states, *backward states] ([y, y_rev, ...] for merge_mode=None).
- initial_state: the first half goes to the forward layer, the second to the backward one.
"""
from __future__ import annotations

from kilnet import ops, serialization
from kilnet.layers.base import Layer
from kilnet.layers.recurrent import _Recurrent

__all__ = ["Bidirectional"]

MERGE_MODES = ("concat", "sum", "mul", "ave", None)


def _removeprefix(name, prefix):
    return name[len(prefix):] if name.startswith(prefix) else name


class Bidirectional(Layer):
    """Args (Keras's): layer (a SimpleRNN, LSTM or GRU, or its config entry),
    merge_mode='concat', weights=None (a list: the forward layer's weights then the backward
    layer's, set when built), backward_layer=None."""

    def __init__(self, layer, merge_mode="concat", weights=None, backward_layer=None, **kwargs):
        super().__init__(**kwargs)
        who = f"Bidirectional {self.name!r}"
        if isinstance(layer, dict):
            layer = serialization.from_entry(layer, who)
        if isinstance(backward_layer, dict):
            backward_layer = serialization.from_entry(backward_layer, who)
        for arg, value in (("layer", layer), ("backward_layer", backward_layer)):
            if value is None and arg == "backward_layer":
                continue
            if not isinstance(value, _Recurrent):
                raise ValueError(f"{who}: {arg} must be a SimpleRNN, LSTM or GRU layer, got "
                                 f"{type(value).__name__}")
        if merge_mode not in MERGE_MODES:
            raise ValueError(f"{who}: invalid merge_mode {merge_mode!r}; valid: 'sum', 'mul', 'ave', 'concat', None")
        # Fresh copies from the config, as Keras: the given layer's weights are not reused.
        cfg = layer.get_config()
        self.forward_layer = type(layer).from_config({**cfg, "name": "forward_" + _removeprefix(layer.name, "forward_")})
        if backward_layer is None:
            backward_layer = type(layer).from_config({**cfg, "go_backwards": True,
                                                      "name": "backward_" + _removeprefix(layer.name, "backward_")})
        self.backward_layer = backward_layer
        self._verify(who)
        for sub in (self.forward_layer, self.backward_layer):   # Keras forces this on both
            sub.zero_output_for_mask = sub.return_sequences
        self.merge_mode = merge_mode
        self._initial_weights = list(weights) if weights else None
        self.stateful = False
        self.return_sequences = layer.return_sequences
        self.return_state = layer.return_state
        self.supports_masking = True

    def _verify(self, who):
        f, b = self.forward_layer, self.backward_layer
        if f.go_backwards == b.go_backwards:
            raise ValueError(f"{who}: the forward and backward layers must have different go_backwards values, "
                             f"got {f.go_backwards} for both")
        for attr in ("return_sequences", "return_state"):
            if getattr(f, attr) != getattr(b, attr):
                raise ValueError(f"{who}: the forward and backward layers must have the same {attr}, got "
                                 f"{getattr(f, attr)} and {getattr(b, attr)}")

    # ------------------------------------------------------------------ building
    def build(self, input_shape):
        for sub in (self.forward_layer, self.backward_layer):
            if not sub.built:
                sub._build(input_shape, initialize=self._initialize)
        if self._initial_weights:
            w = self._initial_weights
            n = len(w) // 2
            self.forward_layer.set_weights(w[:n])
            self.backward_layer.set_weights(w[n:])
            self._initial_weights = None

    def compute_output_shape(self, input_shape):
        fwd = self.forward_layer.compute_output_shape(input_shape)
        bwd = self.backward_layer.compute_output_shape(input_shape)
        states = []
        if self.return_state:
            fwd, states = fwd[0], list(fwd[1:]) + list(bwd[1:])
            bwd = bwd[0]
        if self.merge_mode == "concat":
            out = [(*fwd[:-1], fwd[-1] + bwd[-1])]
        elif self.merge_mode is None:
            out = [tuple(fwd), tuple(bwd)]
        else:
            out = [tuple(fwd)]
        return out + states if len(out) + len(states) > 1 else out[0]

    def compute_mask(self, inputs, mask=None):
        """Keras's: the input's mask with return_sequences (one per output for merge_mode=None),
        else None; the returned states (return_state) carry none."""
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        out = mask if self.return_sequences else None
        out = [out, out] if self.merge_mode is None else [out]
        if self.return_state:
            out += [None] * (self.forward_layer._n_states + self.backward_layer._n_states)
        return out if len(out) > 1 else out[0]

    def keras_weight_path(self, var):
        """A weight's path below this layer as Keras 3 names it: forward_lstm/lstm_cell/kernel."""
        sub = var._owner
        scope = getattr(sub, "keras_weight_scope", None)
        return f"{sub.name}/{scope}/{var.name}" if scope else f"{sub.name}/{var.name}"

    # ------------------------------------------------------------------ compute
    def call(self, sequences, initial_state=None, mask=None, training=None):
        fwd_state = bwd_state = None
        if initial_state is not None:
            states = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
            n = self.forward_layer._n_states + self.backward_layer._n_states
            if len(states) != n:
                raise ValueError(f"Bidirectional {self.name!r}: initial_state must hold {n} arrays (the forward "
                                 f"layer's states, then the backward layer's), got {len(states)}")
            half = self.forward_layer._n_states
            fwd_state, bwd_state = states[:half], states[half:]
        y = self.forward_layer(sequences, initial_state=fwd_state, mask=mask, training=training)
        y_rev = self.backward_layer(sequences, initial_state=bwd_state, mask=mask, training=training)
        states = []
        if self.return_state:
            states = list(y[1:]) + list(y_rev[1:])
            y, y_rev = y[0], y_rev[0]
        if self.return_sequences:   # the backward layer's outputs run last step first
            y_rev = y_rev[:, ::-1]
        if self.merge_mode == "concat":
            out = [ops.concatenate([y, y_rev], axis=-1)]
        elif self.merge_mode == "sum":
            out = [y + y_rev]
        elif self.merge_mode == "ave":
            out = [(y + y_rev) * 0.5]
        elif self.merge_mode == "mul":
            out = [y * y_rev]
        else:
            out = [y, y_rev]
        out += states
        return out if len(out) > 1 else out[0]

    # ------------------------------------------------------------------ config
    def get_config(self):
        return {**super().get_config(), "merge_mode": self.merge_mode,
                "layer": serialization.layer_entry(self.forward_layer),
                "backward_layer": serialization.layer_entry(self.backward_layer)}
