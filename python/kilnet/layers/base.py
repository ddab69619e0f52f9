"""Layer: the base class every kilnet layer derives from.

Two kinds of layer share it:
- fused layers (Dense, Conv2D, the RNNs, ...) implement
    build(input_shape)          creates the weights (_add_weight)
    forward(x, training)        computes y on arrays, keeping what backward needs in _state()
    backward(dy, need_dx, need_dw)
                                returns dx and, with need_dw, ACCUMULATES the weight gradients
                                d<name>; one call of the layer is one op on the tape
- layers written by users override call(inputs, ...) with kilnet.ops and other layers; the
  tape differentiates them, so they write no backward.

`layer(x)` runs either kind on arrays or Tensors (returning a Tensor), or on symbolic
KerasTensors (recording a graph node: the functional API). Weights are Variables (`.variables`);
a fused layer also holds each weight's array as an attribute (self.kernel) and its gradient as
self.dkernel, which a model re-points into its flat parameter and gradient buffers.

What forward keeps lives in a state dict per call (kilnet.engine.state): a layer called twice
keeps two, and inside fit the same dicts come back every step, so buffers are reused.
"""
from __future__ import annotations

import inspect
import threading

import numpy as np

from kilnet import dtype_policies, initializers
from kilnet.backend import cpu as _cpu
from kilnet.backend import to_device, xp_of_device
from kilnet.engine import node as node_mod
from kilnet.engine.state import call_state, state_buffer
from kilnet.engine.tape import current_walk, record
from kilnet.engine import precision
from kilnet.engine.tensor import Tensor, Variable, cast, compute_cast, round_through
from kilnet.naming import reset_name_counters, unique_name
from kilnet.utils import snake_case

__all__ = ["Layer", "reset_name_counters", "policy_output"]

class WeightSpec:
    __slots__ = ("attr", "shape", "initializer", "trainable")

    def __init__(self, attr, shape, initializer, trainable):
        self.attr, self.shape, self.initializer, self.trainable = attr, shape, initializer, trainable


class _CallContext(threading.local):
    training = None     # the training flag of the outermost call, inherited by inner calls
    depth = 0


_ctx = _CallContext()
_call_params: dict = {}
_takes_training: dict = {}    # class -> whether its call() takes `training` (the fast path's cache)
_F32 = np.dtype(np.float32)


def _attach_masks(outputs, masks):
    """Set each output Tensor's mask (where it has none yet) from compute_mask's result."""
    if masks is None:
        return
    outs = node_mod.flatten(outputs)
    ms = node_mod.flatten(masks) if isinstance(masks, (list, tuple, dict)) else [masks] * len(outs)
    for t, m in zip(outs, ms):
        if isinstance(t, Tensor) and m is not None and t._keras_mask is None:
            t._keras_mask = m.value if isinstance(m, Tensor) else m


def _accepts(cls, fn_name, arg) -> bool:
    """Whether cls.<fn_name> takes the keyword `arg` (cached per class)."""
    key = (cls, fn_name, arg)
    hit = _call_params.get(key)
    if hit is None:
        params = inspect.signature(getattr(cls, fn_name)).parameters
        hit = _call_params[key] = arg in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    return hit


class Layer:
    # The device the layer's weights and buffers live on: kernels come from _k (kilnet._cpu or
    # kilnet._cuda), arrays from _xp (numpy or cupy). Model.to(device) moves a model.
    device = "cpu"
    _k = _cpu
    _xp = np

    # Keras keys every layer config may carry; anything else a subclass does not accept is refused.
    _common_config_keys = ("name", "trainable", "dtype", "input_shape", "batch_input_shape",
                           "batch_size")
    # A layer whose input is integer ids (Embedding): __call__ keeps them integers, casts floats
    # to int32 as Keras does, and the tape never asks for their gradient.
    _int_inputs = False

    def __init__(self, name=None, trainable=True, input_shape=None, batch_input_shape=None,
                 dtype=None, batch_size=None, input_dim=None, autocast=True, **kwargs):
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unexpected argument(s) {', '.join(sorted(kwargs))}")
        self._set_policy(dtype)
        if name is not None and (not isinstance(name, str) or not name or "/" in name):
            raise ValueError(f"layer name must be a non-empty string without '/', got {name!r}")
        self.name = name or unique_name(snake_case(type(self).__name__))
        self.trainable = bool(trainable)
        if batch_input_shape is not None:
            input_shape = tuple(batch_input_shape)[1:]
        if input_shape is None and input_dim is not None:
            input_shape = (input_dim,)
        self._input_shape = _check_shape(input_shape, self.name) if input_shape is not None else None
        self.built = False
        self.input_shape = None
        self.output_shape = None
        self._specs: list[WeightSpec] = []
        self._variables: list[Variable] = []
        self._local = threading.local()
        self._inbound_nodes: list = []
        self._initialize = True

    # ------------------------------------------------------------------ dtype policy
    # Keras 3's: the policy says the compute dtype (inputs are cast to it, outputs have it) and
    # the variable dtype. kilnet's variables stay float32 (the flat parameter buffer); a layer
    # whose compute dtype is bfloat16/float16 (_low) runs its bfloat16 kernel where it has one
    # (_computes_low_natively: Dense), else float32 on inputs rounded to the compute dtype, and
    # casts its outputs to it (see docs/mixed_precision.md).
    _low = None   # the compute dtype's name when it is below float32, else None

    def _set_policy(self, dtype):
        try:
            policy = dtype_policies.get(dtype)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{type(self).__name__}: dtype={dtype!r}: {e}") from None
        self._dtype_policy = policy
        cd = policy.compute_dtype
        self._low = None if cd == "float32" or getattr(self, "_is_model_class", False) else cd

    @property
    def dtype_policy(self):
        return self._dtype_policy

    @dtype_policy.setter
    def dtype_policy(self, value):
        self._set_policy(value)

    @property
    def dtype(self) -> str:
        """Keras 3: an alias of variable_dtype."""
        return self._dtype_policy.variable_dtype

    @property
    def compute_dtype(self) -> str:
        return self._dtype_policy.compute_dtype

    @property
    def variable_dtype(self) -> str:
        return self._dtype_policy.variable_dtype

    @property
    def input_dtype(self) -> str:
        return self._dtype_policy.compute_dtype

    # A layer that only moves values (Flatten, Reshape) sets _moves_values: under a low policy
    # it works on the compute dtype itself, forward and backward (no conversions).
    _moves_values = False

    def _computes_low_natively(self) -> bool:
        """Whether the layer's own kernels take inputs in its low compute dtype (bfloat16 Dense
        on the CPU); otherwise it computes in float32 on rounded inputs."""
        return self._moves_values

    def _output_dtype(self) -> str:
        """The dtype of the layer's float outputs (a KerasTensor's dtype)."""
        return self._low or "float32"

    # ------------------------------------------------------------------ building
    def _add_weight(self, attr, shape, initializer="zeros", trainable=True, initialize=True, name=None):
        """Create the weight `self.<attr>` (and its gradient `self.d<attr>` when trainable);
        returns its Variable."""
        init = initializers.get(initializer)
        shape = tuple(int(s) for s in shape)
        from kilnet.weight_budget import charge   # a load's weight budget, checked before allocating
        charge(shape, f"layer {self.name!r}")
        value = init(shape) if initialize else np.zeros(shape, np.float32)
        setattr(self, attr, np.ascontiguousarray(value, dtype=np.float32))
        if trainable:
            setattr(self, "d" + attr, np.zeros(shape, np.float32))
        self._specs.append(WeightSpec(attr, shape, init, trainable))
        var = Variable(trainable=trainable, name=name or attr, _owner=self, _attr=attr)
        var.path = f"{self.name}/{var.name}"
        self._variables.append(var)
        return var

    def add_weight(self, shape=None, initializer=None, dtype=None, trainable=True, autocast=True,
                   regularizer=None, constraint=None, aggregation="none", overwrite_with_gradient=False,
                   name=None, **kwargs):
        """Keras 3's add_weight: a Variable of `shape` (float32) set by `initializer` (default
        'glorot_uniform' for floats as Keras), optionally regularized. Keras 2's order
        add_weight(name, shape, ...) is accepted too."""
        if isinstance(shape, str):   # tf.keras order: add_weight(name, shape, ...)
            name, shape, initializer = shape, initializer, kwargs.pop("initializer", None)
        for k in ("use_resource", "synchronization", "partitioner", "caching_device", "experimental_autocast"):
            kwargs.pop(k, None)
        if kwargs:
            raise TypeError(f"add_weight: unexpected argument(s) {', '.join(sorted(kwargs))}")
        if constraint is not None:
            raise ValueError(f"layer {self.name!r}: add_weight(constraint=...) is not supported yet")
        if dtype is not None and _dtype_name(dtype) != "float32":
            raise ValueError(f"layer {self.name!r}: add_weight(dtype={dtype!r}): kilnet weights are float32")
        shape = () if shape is None else (tuple(shape) if isinstance(shape, (tuple, list)) else (shape,))
        for s in shape:
            if not isinstance(s, (int, np.integer)) or isinstance(s, bool) or s < 0:
                raise ValueError(f"layer {self.name!r}: add_weight shape must hold non-negative ints, got {shape!r}")
        if initializer is None:
            initializer = "glorot_uniform" if len(shape) >= 2 else "zeros"
        name = name or "variable"
        attr = f"_w{len(self._specs)}_{name}".replace("/", "_").replace(".", "_")
        var = self._add_weight(attr, shape, initializer, trainable=trainable,
                               initialize=getattr(self, "_initialize", True), name=name)
        if regularizer is not None:
            from kilnet import regularizers
            setattr(self, attr + "_regularizer", regularizers.get(regularizer))
        return var

    def build(self, input_shape):
        """Create weights for inputs of shape (None, *input_shape[1:])."""

    def _build(self, input_shape, initialize=True):
        input_shape = _as_shape(input_shape)
        self._initialize = initialize
        self.build(input_shape)
        self.input_shape = input_shape
        self.output_shape = _as_shape(self.compute_output_shape(input_shape)) if self._has_shape_rule() else None
        self.built = True
        return self.output_shape

    def _has_shape_rule(self) -> bool:
        return type(self).compute_output_shape is not Layer.compute_output_shape or self._is_fused()

    def forward(self, x, training=False):
        raise NotImplementedError(f"{type(self).__name__}: a layer defines call() (with kilnet.ops) "
                                  "or forward()/backward() (fused kernels)")

    def backward(self, dy, need_dx=True, need_dw=True):
        raise NotImplementedError

    def compute_output_shape(self, input_shape):
        return input_shape

    def _is_fused(self) -> bool:
        """A layer with its own kernels (forward/backward) rather than a call() of ops."""
        return type(self).forward is not Layer.forward

    # ------------------------------------------------------------------ calling
    def __call__(self, *args, **kwargs):
        """Run the layer on arrays or Tensors (a Tensor back), or on KerasTensors from
        kilnet.Input (a KerasTensor back: the functional API records a node)."""
        if len(args) == 1 and type(args[0]) is Tensor and self.built and len(kwargs) <= 1 \
                and args[0]._value.dtype is _F32 and self._low is None and (not kwargs or "training" in kwargs) \
                and args[0]._keras_mask is None and type(self).compute_mask is _base_compute_mask:
            # the common case inside a model (one float32 tensor): none of the structure handling
            training = kwargs.get("training")
            ctx = _ctx
            outer = ctx.training
            if training is None:
                training = outer
            ctx.training = training
            try:
                takes = _takes_training.get(type(self))
                if takes is None:
                    takes = _takes_training[type(self)] = _accepts(type(self), "call", "training")
                return self.call(args[0], training=training) if takes else self.call(args[0])
            finally:
                ctx.training = outer
        if self._low is not None:
            return self._call_low(args, kwargs)
        return self._call_impl(args, kwargs, None)

    def _call_impl(self, args, kwargs, low_mode):
        """The call on concrete or symbolic inputs; low_mode (under a low policy): None, or
        whether the layer's kernels take the compute dtype (True) or rounded float32 (False)."""
        if node_mod.any_symbolic(args, kwargs):
            return node_mod.symbolic_call(self, args, kwargs)
        if not args:
            raise TypeError(f"layer {self.name!r} called without inputs")
        if low_mode is None:
            inputs = node_mod.map_structure(self._to_input, args[0])
        else:
            inputs = node_mod.map_structure(lambda x: self._to_input(x, low_mode), args[0])
        training = kwargs.pop("training", None)
        outer = _ctx.training
        if training is None:
            training = outer
        if not self.built:
            self._build(node_mod.map_shapes(inputs), initialize=self._initialize)
        if _accepts(type(self), "call", "training"):
            kwargs["training"] = training
        # Keras's masks: the first input's mask goes to a call() that takes `mask`, and the
        # outputs get compute_mask's (a layer that does not support masking drops it).
        prev_mask = node_mod.map_structure(lambda t: t._keras_mask, inputs)
        has_mask = any(m is not None for m in node_mod.flatten(prev_mask))
        if has_mask and kwargs.get("mask") is None and _accepts(type(self), "call", "mask"):
            kwargs["mask"] = prev_mask
        _ctx.training = training
        try:
            out = self.call(inputs, *args[1:], **kwargs)
        finally:
            _ctx.training = outer
        if (has_mask and self.supports_masking) or self._makes_mask():
            given = kwargs.get("mask")
            _attach_masks(out, self.compute_mask(inputs, given if given is not None else prev_mask))
        return out

    def _call_low(self, args, kwargs):
        """A call under a bfloat16/float16 policy: inputs rounded to the compute dtype (kept in it
        for a layer that computes in it natively), float outputs cast to it. The final
        softmax/sigmoid keeps its float32 logits, so the loss still fuses with them in float32."""
        if node_mod.any_symbolic(args, kwargs):
            return node_mod.symbolic_call(self, args, kwargs)
        if self.device != "cpu":
            raise ValueError(f"layer {self.name!r}: the {self._dtype_policy.name} policy runs on the CPU only for "
                             "now (no bfloat16/float16 GPU kernels); use the float32 policy on the GPU")
        precision.warn_if_no_speedup(self._low)
        low = precision.np_dtype(self._low)
        native = self._computes_low_natively()
        token = precision.enter_autocast(None if self._is_fused() else low)
        try:
            out = self._call_impl(args, dict(kwargs), native)
        finally:
            precision.exit_autocast(token)
        return node_mod.map_structure(lambda t: _cast_output(t, low), out)

    # Masking (Keras): a layer that passes masks on sets supports_masking; one that makes or
    # changes them overrides compute_mask.
    supports_masking = False

    # A layer whose backward can overwrite its weight gradients on their first write in a
    # training step (when _fresh_grads is set) sets _overwrites_grads: the trainer then skips
    # zeroing its (usually large) gradient views.
    _overwrites_grads = False
    _fresh_grads = False

    def compute_mask(self, inputs, mask=None):
        """The mask of the outputs: by default the input's, if the layer supports masking."""
        return mask if self.supports_masking else None

    def _makes_mask(self) -> bool:
        return type(self).compute_mask is not _base_compute_mask

    def _to_input(self, x, low_mode=None):
        """Inputs as float32 Tensors on the layer's device (Keras autocasts floats to float32);
        a layer that takes integer ids (_int_inputs) gets them as int32/int64 instead."""
        if self._int_inputs:
            return _as_ids(self, x)
        if not isinstance(x, Tensor):
            if x is None or isinstance(x, (str, bytes)):
                raise TypeError(f"layer {self.name!r}: inputs must be arrays or tensors, got {x!r}")
            v = x
            if self.device != "cpu" or not isinstance(v, np.ndarray):
                v = to_device(v if hasattr(v, "__cuda_array_interface__") or isinstance(v, np.ndarray)
                              else np.asarray(v), self.device)
            dt = v.dtype
            low = None if low_mode is None else precision.np_dtype(self._low)
            if low is not None and precision.is_float(dt):
                v = precision.convert(v, low) if low_mode else precision.round_through(
                    precision.convert(v, np.dtype(np.float32)), low)
            elif dt.kind in "fiub" and dt != np.float32 and (dt.kind == "f" or self._is_fused()):
                v = v.astype(np.float32)
            elif precision.is_bf16(dt):
                v = precision.convert(v, np.dtype(np.float32))
            elif dt.kind not in "fiub":
                raise TypeError(f"layer {self.name!r}: inputs must be numeric, got dtype {v.dtype}")
            return Tensor(v)
        v = x.value
        dt = v.dtype
        low = None if low_mode is None else precision.np_dtype(self._low)
        if low is not None and precision.is_float(dt):
            # native: the kernels take the compute dtype itself (and round float32 while packing)
            y = (compute_cast(x, low) if dt != low and dt != np.float32 else x) if low_mode \
                else round_through(x, low)
        elif dt != np.float32 and (precision.is_float(dt) or (dt.kind in "iub" and self._is_fused())):
            y = cast(x, np.float32)
        else:
            return x
        y._keras_mask = x._keras_mask
        return y


    def call(self, inputs, training=None):
        """A fused layer: one op on the tape whose backward is the layer's backward kernel."""
        if not self._is_fused():
            raise NotImplementedError(f"{type(self).__name__} must define call(self, inputs)")
        return fused_call(self, inputs, training)

    # Per-call state: what forward keeps for backward, and reusable buffers.
    def _state(self) -> dict:
        try:
            st = self._local.cur
        except AttributeError:
            st = None
        if st is None:
            st = self._local.cur = {}
        return st

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

    def _buffer(self, key, shape, dtype=np.float32):
        """An array of `shape` (float32 unless told) that this call position reuses across
        steps. A smaller leading dimension (the last partial batch) gets a view of the existing
        buffer."""
        return state_buffer(self._state(), key, shape, dtype, self._xp)

    # ------------------------------------------------------------------ tracking
    def _sublayers(self) -> list:
        """Layers held as attributes (also in lists, tuples and dicts), in attribute order."""
        out, seen = [], {id(self)}
        for k, v in vars(self).items():
            if not k.startswith("_") or k == "_layers":
                _collect_layers(v, out, seen, 0)
        return out

    def _flat_layers(self) -> list:
        """This layer and every layer below it, each once, depth first."""
        out, seen = [], set()
        _walk_layers(self, out, seen)
        return out

    def own_variables(self) -> list:
        """Variables this layer made (add_weight) or holds as attributes."""
        out = list(self._variables)
        ids = {id(v) for v in out}
        for k, v in vars(self).items():
            if isinstance(v, Variable) and id(v) not in ids and not k.startswith("_"):
                ids.add(id(v))
                out.append(v)
        return out

    def _own_trainable_variables(self) -> list:
        return [v for v in self.own_variables() if v.trainable] if self.trainable else []

    def _has_trainable_weights(self) -> bool:
        if not self.trainable:
            return False
        for s in self._specs:
            if s.trainable:
                return True
        return False

    def _all_variables(self) -> list:
        out, ids = [], set()
        for layer in self._flat_layers():
            for v in layer.own_variables():
                if id(v) not in ids:
                    ids.add(id(v))
                    out.append(v)
        return out

    @property
    def variables(self) -> list:
        return self._all_variables()

    @property
    def trainable_variables(self) -> list:
        out, ids = [], set()
        for layer in self._flat_layers():
            if not layer.trainable:
                continue
            for v in layer._own_trainable_variables():
                if id(v) not in ids:
                    ids.add(id(v))
                    out.append(v)
        return out if self.trainable else []

    @property
    def non_trainable_variables(self) -> list:
        train = {id(v) for v in self.trainable_variables}
        return [v for v in self._all_variables() if id(v) not in train]

    # ------------------------------------------------------------------ weights
    @property
    def weights(self) -> list:
        """The layer's Variables (Keras 3: `layer.weights[0].numpy()`; get_weights() for arrays)."""
        return list(self._all_variables())

    @property
    def trainable_weights(self) -> list:
        return list(self.trainable_variables)

    @property
    def non_trainable_weights(self) -> list:
        return list(self.non_trainable_variables)

    def count_params(self) -> int:
        return int(sum(int(np.prod(v.shape)) for v in self._all_variables()))

    def get_weights(self) -> list:
        return [_host_copy(v.value) for v in self._all_variables()]

    def set_weights(self, weights, allow_nonfinite=False) -> None:
        """Copy values into the existing weight arrays, checking count, shape and (unless
        allow_nonfinite) that every value is finite."""
        weights = list(weights)
        variables = self._all_variables()
        if len(weights) != len(variables):
            raise ValueError(f"layer {self.name!r} expects {len(variables)} weight arrays "
                             f"({', '.join(v.name for v in variables) or 'none'}), got {len(weights)}")
        converted = []
        for var, w in zip(variables, weights):
            w = np.asarray(w)
            if w.dtype.kind not in "fiu":
                raise TypeError(f"layer {self.name!r}: weight {var.name!r} must be numeric, got {w.dtype}")
            if tuple(w.shape) != tuple(var.shape):
                raise ValueError(f"layer {self.name!r}: weight {var.name!r} must have shape "
                                 f"{tuple(var.shape)}, got {tuple(w.shape)}")
            if not allow_nonfinite and w.dtype.kind == "f" and not np.isfinite(w).all():
                raise ValueError(f"layer {self.name!r}: weight {var.name!r} holds NaN or Inf (pass "
                                 "allow_nonfinite=True to set it anyway)")
            converted.append(w)
        for var, w in zip(variables, converted):
            dst = var.value
            if isinstance(dst, np.ndarray):
                np.copyto(dst, w, casting="unsafe")
            else:   # on the GPU: one host-to-device copy into the existing array
                dst.set(np.ascontiguousarray(w, dtype=np.float32))

    # ------------------------------------------------------------------ config
    def get_config(self) -> dict:
        return {"name": self.name, "trainable": self.trainable,
                "dtype": dtype_policies.serialize(self._dtype_policy)}

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r}>"


_base_compute_mask = Layer.compute_mask   # a layer overriding it makes masks: no fast path


def policy_output(layer, t):
    """t as the layer's own call returns it: cast to its compute dtype under a low policy (for
    code that runs a layer's computation outside its call, e.g. a fused group)."""
    return t if layer._low is None else _cast_output(t, precision.np_dtype(layer._low))


def _cast_output(t, low):
    """A float output Tensor of a layer under a low policy, cast to the compute dtype. A
    softmax/sigmoid output keeps its float32 logits for a fused loss."""
    if not isinstance(t, Tensor):
        return t
    v = t.value
    if v.dtype == low or not precision.is_float(v.dtype):
        return t
    y = compute_cast(t, low)
    y._keras_logits = t._keras_logits
    y._keras_mask = t._keras_mask
    return y


def _collect_layers(v, out, seen, depth):
    # module-level, not a closure: a recursive closure is a reference cycle the step would leave
    # to the garbage collector
    if isinstance(v, Layer):
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    elif isinstance(v, (list, tuple)) and depth < 3:
        for item in v:
            _collect_layers(item, out, seen, depth + 1)
    elif isinstance(v, dict) and depth < 3:
        for item in v.values():
            _collect_layers(item, out, seen, depth + 1)


def _walk_layers(layer, out, seen):
    if id(layer) in seen:
        return
    seen.add(id(layer))
    out.append(layer)
    for sub in layer._sublayers():
        _walk_layers(sub, out, seen)


def fused_call(layer, x, training, forward=None, backward=None, st=None, **forward_kwargs):
    """One call of a fused layer as one tape op: forward on arrays now, the layer's backward
    kernel when the tape walks back (forward/backward: other methods of the layer, e.g. the
    linear part of an ActivatedLayer). Its state dict `st` belongs to this call."""
    forward = forward or layer.forward
    backward = backward or layer.backward
    if not isinstance(x, Tensor):
        raise TypeError(f"layer {layer.name!r} takes one input tensor, got {type(x).__name__}")
    xv = x.value
    if not xv.flags.c_contiguous:
        x = _contiguous(x)
        xv = x.value
    if st is None:
        st = call_state(layer)
    loc = layer._local
    prev = getattr(loc, "cur", None)
    loc.cur = st
    try:
        y = forward(xv, training, **forward_kwargs) if forward_kwargs else forward(xv, training)
    finally:
        loc.cur = prev
    out = Tensor(y)

    def bw(g, needs):
        prev = getattr(loc, "cur", None)
        loc.cur = st
        try:
            walk = current_walk()
            need_dw = walk is None or walk.need_dw(layer)
            if need_dw and walk is not None and walk.first_write(layer) and layer._overwrites_grads:
                layer._fresh_grads = True   # this backward may overwrite the views (no zeroing needed)
            if g.dtype is not _F32 and not (layer._moves_values and g.dtype == xv.dtype):
                g = precision.convert(g, _F32)
            if not g.flags.c_contiguous:
                g = layer._xp.ascontiguousarray(g)
            # (a bfloat16 input's gradient stays float32: precision.grad_as)
            return (backward(g, needs[0], need_dw),)
        finally:
            loc.cur = prev
    record((x,), (out,), bw, layer)
    return out


def _as_ids(layer, x):
    """x as a Tensor of int32 or int64 ids on the layer's device: other integer widths become
    int64, floats and bools int32 (Keras's Embedding casts to int32)."""
    v = x.value if isinstance(x, Tensor) else x
    if v is None or isinstance(v, (str, bytes)):
        raise TypeError(f"layer {layer.name!r}: inputs must be arrays or tensors of integer ids, got {v!r}")
    if not isinstance(v, np.ndarray) and not hasattr(v, "__cuda_array_interface__"):
        v = np.asarray(v)
    if layer.device != "cpu" or not isinstance(v, np.ndarray):
        v = to_device(v, layer.device)
    kind = v.dtype.kind
    if kind in "iu":
        if v.dtype != np.int32 and v.dtype != np.int64:
            v = v.astype(np.int64)
    elif kind in "fb":
        v = v.astype(np.int32)
    else:
        raise TypeError(f"layer {layer.name!r}: inputs must be integer ids, got dtype {v.dtype}")
    return x if isinstance(x, Tensor) and v is x.value else Tensor(v)


def _contiguous(x):
    y = Tensor(x._xp().ascontiguousarray(x.value))
    record((x,), (y,), lambda g, needs: (g,))
    return y


def _as_shape(shape):
    if isinstance(shape, list) and shape and isinstance(shape[0], (tuple, list)):
        return [tuple(s) for s in shape]
    return tuple(shape)


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


# The largest stride, dilation, kernel or pool size (kilnet/detail/geometry.h's kGeomMax): the
# kernels' index arithmetic is checked against it, so layers refuse beyond it at construction.
GEOMETRY_MAX = 2**31 - 1


def _geometry_int(v):
    """An int from an int, a numpy integer or an integral float (JSON configs); else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)) and np.isfinite(v) and float(v).is_integer():
        return int(v)
    return None


def normalize_tuple(value, n, name, who):
    """Keras's conv argument form: an int or a tuple of n positive ints (each at most 2**31 - 1)."""
    if _geometry_int(value) is not None:
        value = (_geometry_int(value),) * n
    try:
        ints = tuple(_geometry_int(v) for v in value)
    except TypeError:
        ints = (None,)
    if None in ints or isinstance(value, (str, bytes)):
        raise TypeError(f"{who}: {name} must be an int or a tuple of {n} ints, got {value!r}") from None
    if len(ints) != n or any(v < 1 or v > GEOMETRY_MAX for v in ints):
        raise ValueError(f"{who}: {name} must be {n} ints in [1, {GEOMETRY_MAX}], got {value!r}")
    return ints


def _batch1(shape):
    return tuple(1 if d is None else int(d) for d in shape)


def check_conv_geometry(who, x_shape, w_shape, y_shape, strides, padding, dilation):
    """The kernels' geometry rules (conv2d_check_geometry: no index overflow, an output the input
    can produce, a padded image bounded by the image) on a layer's shapes, at build: a layer, and
    so a model file, cannot describe what the kernels would refuse. x NHWC, w RSCK (depthwise
    RSCM), y NPQK; an unknown batch counts as 1."""
    try:
        _cpu.conv2d_check_geometry(_batch1(x_shape), _batch1(w_shape), _batch1(y_shape), tuple(strides),
                                   tuple(padding), tuple(dilation))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{who}: {e}") from None


def check_pool_geometry(who, x_shape, y_shape, pool_size, strides, padding):
    """check_conv_geometry's counterpart for pooling (pool2d_check_geometry)."""
    try:
        _cpu.pool2d_check_geometry(_batch1(x_shape), _batch1(y_shape), tuple(pool_size), tuple(strides),
                                   tuple(padding))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{who}: {e}") from None
