"""The tape: what ran, in order, so that one backward walk can differentiate it.

While a GradientTape records, every differentiable op appends one Entry (its input and output
tensors and a function from the output gradients to the input gradients). `gradient()` walks
the entries last to first once, accumulating each tensor's gradient by identity. Variables are
the leaves: a fused layer kernel adds its weight gradients straight into the variables' views of
the model's flat gradient buffer; ops written in Python hand theirs to the walk, which adds them
into the same views at the end. So the optimizer always sees one flat gradient.

Ops never look at tapes themselves: they call `record(...)`, which is a no-op when nothing
records (inference pays for no bookkeeping).
"""
from __future__ import annotations

import threading

__all__ = ["GradientTape", "Entry", "record", "recording", "current_walk", "backward", "walk_into_variables"]

_local = threading.local()


def _active() -> list:
    t = getattr(_local, "tapes", None)
    if t is None:
        t = _local.tapes = []
    return t


def recording() -> bool:
    """True when at least one GradientTape records on this thread."""
    return bool(getattr(_local, "tapes", None))


class pause_recording:
    """`with pause_recording():` nothing is recorded on this thread (shape inference runs)."""

    def __enter__(self):
        self.saved = getattr(_local, "tapes", None)
        _local.tapes = []

    def __exit__(self, *exc):
        _local.tapes = self.saved
        return False


class Entry:
    """One recorded op. backward(g, needs) gets the output gradient (an array, or a list of
    arrays/None for several outputs) and a tuple saying which inputs need a gradient; it returns
    one gradient (or None) per input. `layer` is set for a fused layer call, so the walk can tell
    it whether to write weight gradients and report when they are final (distributed buckets)."""
    __slots__ = ("inputs", "outputs", "backward", "layer")

    def __init__(self, inputs, outputs, backward, layer=None):
        self.inputs, self.outputs, self.backward, self.layer = inputs, outputs, backward, layer


def record(inputs, outputs, backward, layer=None) -> bool:
    """Append an entry to every recording tape when any input (or the layer's weights) needs a
    gradient; marks the outputs as needing one too. Returns whether it recorded."""
    tapes = getattr(_local, "tapes", None)
    if not tapes:
        return False
    for t in inputs:
        if t._rg:
            break
    else:
        if layer is None or not layer._has_trainable_weights():
            return False
    e = Entry(inputs, outputs, backward, layer)
    for t in outputs:
        t._rg = True
    for tape in tapes:
        if not tape._stopped:
            tape._entries.append(e)
    return True


class _Walk:
    """What a fused layer's backward asks during a walk: write weight gradients or not."""
    __slots__ = ("wanted", "all_layers", "_cache", "on_layer_done", "written")

    def __init__(self, wanted_ids, all_layers, on_layer_done=None, written=None):
        self.wanted, self.all_layers, self._cache = wanted_ids, all_layers, {}
        self.on_layer_done = on_layer_done
        self.written = written   # the trainer's walk: ids of layers that wrote their gradients

    def first_write(self, layer) -> bool:
        """True the first time `layer` writes its weight gradients in the trainer's walk: a
        layer that can (Dense) then overwrites its gradient views instead of adding to them."""
        w = self.written
        if w is None or id(layer) in w:
            return False
        w.add(id(layer))
        return True

    def need_dw(self, layer) -> bool:
        if not layer.trainable:
            return False
        if self.all_layers:
            return True
        hit = self._cache.get(id(layer))
        if hit is None:
            hit = self._cache[id(layer)] = any(id(v) in self.wanted for v in layer.trainable_variables)
        return hit


def current_walk() -> _Walk | None:
    return getattr(_local, "walk", None)


class GradientTape:
    """Records the ops run inside `with GradientTape() as tape:`; `tape.gradient(target,
    sources)` returns d(target)/d(source) for each source (a Variable or a watched Tensor), None
    where the target does not depend on it. As TensorFlow's: persistent=False allows one
    gradient() call; watch(tensor) makes a plain tensor a source."""

    def __init__(self, persistent=False, watch_accessed_variables=True):
        self.persistent = bool(persistent)
        self._entries: list[Entry] = []
        self._stopped = False
        self._used = False

    def __enter__(self):
        _active().append(self)
        return self

    def __exit__(self, *exc):
        tapes = _active()
        if self in tapes:
            tapes.remove(self)
        return False

    def watch(self, tensor) -> None:
        items = tensor if isinstance(tensor, (list, tuple)) else [tensor]
        for t in items:
            if not _is_tensor(t):
                raise TypeError(f"GradientTape.watch: expects kilnet Tensors or Variables (convert arrays with "
                                f"kilnet.ops.convert_to_tensor first), got {type(t).__name__}")
            t._rg = True

    def stop_recording(self):
        """Context manager: ops inside it are not recorded on this tape."""
        tape = self

        class _Pause:
            def __enter__(self):
                tape._stopped = True

            def __exit__(self, *exc):
                tape._stopped = False
        return _Pause()

    def reset(self):
        self._entries.clear()

    def gradient(self, target, sources, output_gradients=None, unconnected_gradients="none"):
        """Gradients of target with respect to sources (a Variable/Tensor, or a list/tuple/dict
        of them, the same structure returned). Non-scalar targets need output_gradients."""
        if self._used and not self.persistent:
            raise RuntimeError("GradientTape.gradient can only be called once on a non-persistent tape; "
                               "use GradientTape(persistent=True) to call it several times")
        self._used = True
        flat, rebuild = _flatten(sources)
        for s in flat:
            if not _is_tensor(s):
                raise TypeError(f"GradientTape.gradient: sources must be Variables or Tensors, got {type(s).__name__}")
        targets = target if isinstance(target, (list, tuple)) else [target]
        if output_gradients is not None and not isinstance(output_gradients, (list, tuple)):
            output_gradients = [output_gradients]
        if output_gradients is not None and len(output_gradients) != len(targets):
            raise ValueError(f"GradientTape.gradient: {len(targets)} target(s) but {len(output_gradients)} "
                             "output_gradients")
        seeds = []
        for i, t in enumerate(targets):
            if not _is_tensor(t):
                raise TypeError(f"GradientTape.gradient: the target must be a kilnet Tensor computed under "
                                f"the tape, got {type(t).__name__}")
            xp = t._xp()
            if output_gradients is None:
                if t.value.size != 1:
                    raise ValueError(f"GradientTape.gradient: the target has shape {tuple(t.shape)}, not a scalar; "
                                     "reduce it first (e.g. kilnet.ops.mean) or pass output_gradients= of that shape")
                seeds.append(xp.ones(t.value.shape, t.value.dtype))
            else:
                g = output_gradients[i]
                g = g.value if _is_tensor(g) else g
                g = xp.array(g, dtype=t.value.dtype)   # a copy: fused backwards work in place
                if g.shape != t.value.shape:
                    raise ValueError(f"GradientTape.gradient: output_gradients[{i}] has shape {g.shape}, the "
                                     f"target {t.value.shape}")
                seeds.append(g)
        variables = [s for s in flat if _is_variable(s)]
        for v in variables:
            if v.trainable:
                v._grad_array().fill(0)
        grads = backward(self._entries, targets, seeds, flat, variables, zero_layers=True)
        out = []
        for s, g in zip(flat, grads):
            if g is None and unconnected_gradients == "zero":
                g = s._xp().zeros(s.value.shape, s.value.dtype)
            out.append(None if g is None else _tensor_type[0](g))
        if not self.persistent:
            self._entries = []
        return rebuild(out)


def backward(entries, targets, seeds, sources=(), variables=(), zero_layers=False, on_layer_done=None,
             all_layers=False, keep_variable_grads=False):
    """The reverse walk over `entries`. Returns one gradient array (or None) per source: for a
    Variable the value of its gradient view (copied unless keep_variable_grads), for a tensor
    its accumulated gradient. With all_layers every fused layer writes its weight gradients
    (the trainer zeroes the flat buffer itself); otherwise only layers owning a wanted variable
    do, after zero_layers cleared their gradient views."""
    wanted = {id(v) for v in variables}
    walk = _Walk(wanted, all_layers, on_layer_done)
    if zero_layers and not all_layers:
        seen = set()
        for e in entries:
            layer = e.layer
            if layer is not None and id(layer) not in seen:
                seen.add(id(layer))
                if walk.need_dw(layer):
                    for v in layer.trainable_variables:   # a wrapper's include the wrapped layer's
                        v._grad_array().fill(0)
    src_ids = {id(s) for s in sources}
    grads, kept = {}, {}
    for t, g in zip(targets, seeds):
        _acc(grads, t, g)
    prev = getattr(_local, "walk", None)
    _local.walk = walk
    try:
        _walk(entries, grads, src_ids, kept, on_layer_done)
    finally:
        _local.walk = prev
    out = []
    for s in sources:
        if _is_variable(s):
            g = grads.get(id(s))
            if not s.trainable:
                out.append(g)
                continue
            buf = s._grad_array()
            if g is not None:
                buf += g
            if keep_variable_grads:
                out.append(buf)
                continue
            touched = g is not None or any(e.layer is not None and any(v is s for v in e.layer.trainable_variables)
                                           for e in entries)
            out.append(buf.copy() if touched else None)
        else:
            g = kept.get(id(s), grads.get(id(s)))
            out.append(g)
    return out


_tensor_type: list = []   # engine/tensor.py registers Tensor (it imports this module, not the reverse)


def register_tensor_type(cls) -> None:
    _tensor_type[:] = [cls]


def walk_into_variables(entries, target, seed, variables_by_id, on_layer_done=None, walk=None) -> set:
    """The trainer's walk: every fused layer writes its weight gradients into the flat
    gradient buffer, and gradients that ops hand to Variables (layers written with kilnet.ops)
    are added to the same views. The caller zeroes the views beforehand, except those of layers
    that overwrite theirs on their first write (`_overwrites_grads`); returns the ids of the
    layers that wrote, so the caller can zero those that did not. walk: another object with
    _Walk's methods for the layers to ask (DP-SGD's, which keeps per-example inputs)."""
    grads = {id(target): seed}
    prev = getattr(_local, "walk", None)
    written = set()
    _local.walk = _Walk(None, True, on_layer_done, written) if walk is None else walk
    try:
        _walk(entries, grads, (), None, on_layer_done)
    finally:
        _local.walk = prev
    for k, g in grads.items():   # what is left: gradients of leaves (inputs, Variables)
        v = variables_by_id.get(k)
        if v is not None:
            buf = v._grad_array()
            buf += g
    return written


def _walk(entries, grads, src_ids, kept, on_layer_done):
    """Entries last to first: each output gradient goes to its op's backward once, and what
    comes back accumulates on the op's inputs (by identity)."""
    pop = grads.pop
    for e in reversed(entries):
        outs = e.outputs
        if len(outs) == 1:
            o = outs[0]
            g = pop(id(o), None)
            if g is None:
                continue
            if src_ids and id(o) in src_ids:
                kept[id(o)] = g.copy()
        else:
            g = [pop(id(o), None) for o in outs]
            if all(x is None for x in g):
                continue
            if src_ids:
                for o, x in zip(outs, g):
                    if x is not None and id(o) in src_ids:
                        kept[id(o)] = x.copy()
        ins = e.inputs
        if len(ins) == 1:   # most ops: no bookkeeping of shared arrays needed
            t = ins[0]
            need = t._rg
            gin = e.backward(g, (need,))
            if on_layer_done is not None and e.layer is not None:
                on_layer_done(e.layer)
            gi = gin[0]
            if need and gi is not None:
                _check_grad(gi, t)
                _acc(grads, t, gi)
            continue
        needs = tuple(t._rg for t in ins)
        gin = e.backward(g, needs)
        if on_layer_done is not None and e.layer is not None:
            on_layer_done(e.layer)
        handed = set()
        for t, gi, need in zip(ins, gin, needs):
            if gi is None or not need:
                continue
            _check_grad(gi, t)
            # one array handed to two inputs (add's rule) must not be shared: fused
            # backwards work on their gradient in place
            if id(gi) in handed:
                gi = gi.copy()
            handed.add(id(gi))
            _acc(grads, t, gi)


def _check_grad(g, t):
    if g.shape != t.value.shape:   # a rule's slip would otherwise spread silently
        raise RuntimeError(f"internal: gradient of shape {g.shape} for a tensor of shape {t.value.shape}")


def _is_tensor(t) -> bool:
    """A kilnet Tensor or Variable (duck-typed: engine/tensor.py imports this module)."""
    return hasattr(t, "_rg") and hasattr(t, "_keras_logits")


def _is_variable(t) -> bool:
    return _is_tensor(t) and hasattr(t, "_grad_array")


def _acc(grads, t, g):
    k = id(t)
    old = grads.get(k)
    grads[k] = g if old is None else old + g


def _flatten(sources):
    """(list of leaves, function rebuilding the structure from a list)."""
    if isinstance(sources, dict):
        keys = list(sources)
        return [sources[k] for k in keys], lambda out: dict(zip(keys, out))
    if isinstance(sources, (list, tuple)):
        kind = type(sources)
        return list(sources), (lambda out: kind(out)) if kind in (list, tuple) else (lambda out: list(out))
    return [sources], lambda out: out[0]
