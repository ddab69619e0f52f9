"""fit, evaluate and predict for any Model (functional, Sequential, subclassed).

The step: under a GradientTape the model runs on the batch (each fused layer call is one op,
user code many), the compiled loss is one more op (fused with a softmax/sigmoid output), one
reverse walk writes every gradient into the model's flat gradient buffer, and the optimizer
updates all parameters in one kernel call. Layer state comes from a per-model pool, so buffers
are reused across batches and the steady-state step allocates no array memory. A model that
overrides train_step / test_step gets them called instead, with (x, y) batches, as in Keras.

The epoch loop is shared with data-parallel training: `run` (trainers/policy.py, or
kilnet.distributed._Rank) says what differs per process.
"""
from __future__ import annotations

import math
import threading
import time
import warnings

import numpy as np

from kilnet import regularizers as regularizers_mod
from kilnet.losses import check_sample_weight
from kilnet.backend import xp_of_device
from kilnet.callbacks import Callback, CallbackList, History
from kilnet.engine import fusion
from kilnet.engine import node as node_mod
from kilnet.engine.state import StatePool, using_pool
from kilnet.engine.tape import GradientTape, walk_into_variables
from kilnet.engine.tensor import Tensor
from kilnet.trainers.policy import OneProcess, verbosity
from kilnet.trainers.progress import _Progress
from kilnet.utils import as_numpy, get_rng, to_float32

__all__ = ["fit", "evaluate", "predict", "default_train_step", "default_test_step", "train_on_batch",
           "test_on_batch"]


# ---------------------------------------------------------------------- data in model structure
class _Inputs:
    """x as a flat list of arrays and the structure the model's call takes them in."""

    def __init__(self, model, x, what):
        if x is None:
            raise ValueError(f"{what}: x (the inputs) is required")
        names = model._input_names()
        if isinstance(x, (list, tuple)) and not _is_list_of_arrays(x, names):
            x = as_numpy(x, "x")          # one array written as nested lists
        elif isinstance(x, (list, tuple)) and names is not None and len(names) == 1 and len(x) == 1:
            x = x[0]
        if isinstance(x, dict):
            if names is not None:
                unknown = [k for k in x if k not in names]
                if unknown:
                    raise ValueError(f"{what}: x names input(s) {unknown} the model does not have; inputs: {names}")
                missing = [k for k in names if k not in x]
                if missing:
                    raise ValueError(f"{what}: x has no array for input(s) {missing}")
                keys = list(names)
            else:
                keys = list(x)
            self.arrays = [_as_input(x[k], f"x[{k!r}]") for k in keys]
            self.rebuild = (lambda l, keys=keys: dict(zip(keys, l))) if names is None else \
                (lambda l: l if len(l) > 1 else l[0])
        elif isinstance(x, (list, tuple)):
            self.arrays = [_as_input(a, f"x[{i}]") for i, a in enumerate(x)]
            if names is not None and len(self.arrays) != len(names):
                raise ValueError(f"{what}: the model has {len(names)} input(s) ({', '.join(names)}), x has "
                                 f"{len(self.arrays)} arrays")
            self.rebuild = (lambda l: l if len(l) > 1 else l[0]) if names is not None else \
                (lambda l, kind=type(x): kind(l))
        else:
            if names is not None and len(names) > 1:
                raise ValueError(f"{what}: the model has {len(names)} inputs ({', '.join(names)}); pass x as a "
                                 "list or a dict keyed by input name")
            self.arrays = [_as_input(x, "x")]
            self.rebuild = lambda l: l[0]
        n = {len(a) for a in self.arrays}
        if len(n) > 1:
            raise ValueError(f"{what}: the input arrays have different numbers of samples ({sorted(n)})")
        self.n = n.pop()
        model._check_input_arrays(self.arrays, what)


def _is_list_of_arrays(x, names):
    """Whether a list passed as x holds one array per model input (rather than being one array
    written as nested lists)."""
    if names is not None and len(names) > 1:
        return True
    return len(x) > 0 and all(hasattr(v, "shape") or hasattr(v, "__array__") for v in x)


def _as_input(a, name):
    a = as_numpy(a, name)
    if isinstance(a, np.memmap):
        return _memmap_input(a, name)
    if a.dtype.kind == "f" or a.dtype.kind == "b":
        a = to_float32(a, name)
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or Inf")
        return a
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be numeric, got an array of dtype {a.dtype}")
    if a.ndim == 0 or a.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {a.shape}); need at least one sample")
    return np.ascontiguousarray(a)


def _memmap_input(a, name, block_bytes=1 << 22):
    """A file-backed array stays on disk: checked in blocks of rows (about 4 MiB), never
    converted whole (_ArrayFeed converts each batch to float32 as it gathers it)."""
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be numeric, got an array of dtype {a.dtype}")
    if a.ndim == 0 or a.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {a.shape}); need at least one sample")
    if a.dtype.kind == "f":
        rows_per_check = max(1, block_bytes // max(1, a[:1].nbytes))
        for i in range(0, a.shape[0], rows_per_check):
            if not np.isfinite(a[i:i + rows_per_check]).all():
                raise ValueError(f"{name} contains NaN or Inf")
    return a


class _Feed:
    """Batches of several arrays (inputs, then targets) in one epoch order."""

    def __init__(self, arrays, batch, device):
        self.feeds = [_ArrayFeed(a, batch, device) for a in arrays]
        self.device = device

    def start_epoch(self, order):
        order_dev = None
        if order is not None and any(f.resident for f in self.feeds):
            import cupy
            order_dev = cupy.asarray(order)
        for f in self.feeds:
            f.start_epoch(order, order_dev)

    def batch(self, i, j):
        return [f.batch(i, j) for f in self.feeds]


class _StepState:
    """What a model's steps reuse: a tape, the layer-state pool, loss buffers, one seed."""

    def __init__(self, model):
        xp = xp_of_device(model.device)
        self.tape = GradientTape(persistent=True)
        self.pool = StatePool()
        self.bufs = _Buffers(xp)
        self.one = xp.ones((), np.float32)
        self.device = model.device
        self.layout, self.variables, self.layers = object(), None, None


def _step_state(model, phase) -> _StepState:
    key = (threading.get_ident(), phase)
    st = model._pools.get(key)
    if st is None or st.device != model.device:
        st = model._pools[key] = _StepState(model)
    return st


def _bind(model, inputs):
    """Build the model for these inputs and resolve its compiled losses per output."""
    if not model.built or (model.compiled is not None and not model.compiled.bound):
        probe = inputs.rebuild([a[:1] for a in inputs.arrays])
        y = model(probe, training=False)
        if model.compiled is not None and not model.compiled.bound:
            model.compiled.bind(model, y)
    model._consolidate()


# ---------------------------------------------------------------------- the steps
def default_train_step(model, data, loss_out=None):
    """One optimizer step on a prepared batch (x structure, list of prepared targets[, list of
    per-output sample weights]); returns (loss or None on the GPU with loss_out, predictions
    per output)."""
    private = getattr(model.optimizer, "_private_train_step", None)
    if private is not None:   # DP-SGD (kilnet.privacy): per-example clipping and noise
        return private(model, data, loss_out)
    x, ys, sws = data if len(data) == 3 else (*data, None)
    st = _step_state(model, "train")
    if st.layout is not model._layout_key:   # what the step walks over, found once per layout
        _plan_step(st, model)
    # Gradients accumulate: zero the views of layers that do not overwrite theirs (one fill
    # of the whole buffer when there are many).
    if st.zero_views is None:
        model._grads.fill(0.0)
    else:
        for a in st.zero_views:
            a.fill(0.0)
    tape = st.tape
    tape._entries.clear()
    if type(x) is np.ndarray or hasattr(x, "__cuda_array_interface__"):
        x = Tensor(x)    # one input array: the model's call takes its fast path
    # Fused layer groups (engine/fusion.py) write several layers' gradients from one tape entry:
    # right for this walk, which wants every trainable weight's gradient.
    with using_pool(st.pool), tape, fusion.allowing(True):
        y_pred = model(x, training=True)
        total, parts, preds = model.compiled.step_loss(y_pred, ys, st.bufs, loss_out, sws)
    sync = model._grad_sync    # distributed: starts each bucket's reduction once backward made it
    model.compiled.last_parts = parts
    # A LossScaleOptimizer's scale seeds the walk: the gradients of scale * loss (float16 ones
    # stay above underflow); its apply() unscales them or skips the step.
    scale = getattr(model.optimizer, "dynamic_scale", None)   # a LossScaleOptimizer's (Keras's name)
    seed = st.one if scale is None else st.one * np.float32(scale)
    written = walk_into_variables(tape._entries, total, seed, st.variables,
                                  None if sync is None else sync.layer_object_done)
    for layer, views in st.overwriting:
        if id(layer) not in written:   # not reached this step: its gradient is zero
            for a in views:
                a.fill(0.0)
    tape._entries.clear()
    if sync is not None:
        sync.finish()   # distributed: _grads now holds the global batch's gradient
    loss = None if loss_out is not None and model.device != "cpu" else float(total.value)
    # Weight penalties (kernel_regularizer=...): Keras adds them to the loss, so their gradients
    # join the weights' before the optimizer clips and applies them.
    penalty = regularizers_mod.penalties(st.layers, grads=True, grad_scale=scale) if model.trainable else 0.0
    model.optimizer.apply(model._params, model._grads)
    return (penalty if loss is None else loss + penalty), preds


def _plan_step(st, model):
    """Per parameter layout: the layers, the variables by id, the gradient views to zero before
    each step (None: the whole buffer) and the layers that overwrite theirs instead."""
    st.layout, st.layers = model._layout_key, model._flat_layers()
    variables = model.trainable_variables
    st.variables = {id(v): v for v in variables}
    # A layer run inside another fused layer's kernels (TimeDistributed(Dense)) is not on the
    # tape itself: its wrapper's backward accumulates into its views, which must be zeroed.
    inner = {id(s) for l in st.layers if l._is_fused() for s in l._flat_layers() if s is not l}
    st.overwriting = [(l, [v._grad_array() for v in l._own_trainable_variables()]) for l in st.layers
                      if l._overwrites_grads and l._has_trainable_weights() and id(l) not in inner]
    skip = {id(v) for l, _ in st.overwriting for v in l._own_trainable_variables()}
    rest = [v._grad_array() for v in variables if id(v) not in skip]
    st.zero_views = rest if len(rest) <= 8 else None


def default_test_step(model, data, loss_out=None):
    x, ys, sws = data if len(data) == 3 else (*data, None)
    st = _step_state(model, "test")
    with using_pool(st.pool):
        y_pred = model(x, training=False)
        total, _, preds = model.compiled.step_loss(y_pred, ys, st.bufs, loss_out, sws)
    return (None if loss_out is not None and model.device != "cpu" else float(total.value)), preds



# ---------------------------------------------------------------------- fit
def fit(model, x, y, batch_size, epochs, verbose, callbacks, validation_split, validation_data, shuffle,
        class_weight, sample_weight, initial_epoch, steps_per_epoch, validation_steps, validation_batch_size,
        validation_freq, distributed):
    model._require_compiled("fit")
    if steps_per_epoch is not None:
        raise ValueError("fit: steps_per_epoch applies to generators, PyDatasets and other iterables of batches; "
                         "with arrays, batch_size sets the steps")
    if validation_steps is not None and not callable(validation_data):
        raise ValueError("fit: validation_steps applies to validation_data given as a generator, PyDataset or "
                         "other iterable of batches")
    batch_size = _check_batch_size(batch_size, "fit")
    if not isinstance(epochs, (int, np.integer)) or epochs < 0:
        raise ValueError(f"fit: epochs must be a non-negative int, got {epochs!r}")
    if not 0.0 <= float(validation_split) < 1.0:
        raise ValueError(f"fit: validation_split must be in [0, 1), got {validation_split!r}")
    if isinstance(initial_epoch, bool) or not isinstance(initial_epoch, (int, np.integer)) or initial_epoch < 0:
        raise ValueError(f"fit: initial_epoch must be a non-negative int, got {initial_epoch!r}")
    if isinstance(validation_freq, bool) or not isinstance(validation_freq, (int, np.integer)) or validation_freq < 1:
        raise ValueError(f"fit: validation_freq must be a positive int (validate every n epochs), got {validation_freq!r}")
    with model._exclusive("fit", reentrant=False):
        data = _prepare_fit(model, x, y, float(validation_split), validation_data, sample_weight, class_weight)
        run = None
        private_run = getattr(model.optimizer, "_fit_run", None)   # DP-SGD: Poisson batches, epsilon
        if private_run is not None and distributed:
            raise ValueError("fit: DP-SGD (a kilnet.privacy optimizer) is not supported with distributed=True")
        if private_run is not None:
            run = private_run(data.n, batch_size, callbacks)
        if distributed:
            if callable(data.val):
                raise ValueError("fit: validation_data from a generator or PyDataset is not supported with "
                                 "distributed=True")
            if data.sws is not None:
                raise ValueError("fit: sample_weight/class_weight are not supported with distributed=True")
            from kilnet import distributed as dist
            run = dist.prepare_fit(model, data, batch_size, int(epochs), int(initial_epoch), shuffle)
        return train(model, run or OneProcess(data.n, batch_size), data, batch_size, int(epochs), verbose,
                     callbacks, shuffle, int(initial_epoch), validation_batch_size or batch_size, validation_freq)


class _FitData:
    """fit's data after checks: the inputs, prepared targets per output, sample weights per
    output (or None), validation split (inputs, targets, sample weights)."""

    def __init__(self, inputs, ys, val, sws=None):
        self.inputs, self.ys, self.val, self.sws = inputs, ys, val, sws
        self.n = inputs.n

    def arrays(self):
        return _batch_arrays(self.inputs, self.ys, self.sws)


def _batch_arrays(inputs, ys, sws):
    """What a feed hands out per batch: inputs, the targets of outputs with a loss, then the
    sample weights of those outputs (when given)."""
    extra = [] if sws is None else [w if w is not None else np.ones(inputs.n, np.float32)
                                    for w, y in zip(sws, ys) if y is not None]
    return inputs.arrays + [y for y in ys if y is not None] + extra


def _split_batch(batch, n_in, ys, sws):
    """(x arrays, per-output targets, per-output sample weights or None) of one fed batch."""
    k = sum(y is not None for y in ys)
    ybs = _full_targets(ys, batch[n_in:n_in + k])
    swb = None if sws is None else _full_targets(ys, batch[n_in + k:])
    return batch[:n_in], ybs, swb


def _sample_weights(model, ys_raw, n, sample_weight, class_weight, what):
    """Per-output sample weights from sample_weight and/or class_weight (Keras: a dict
    class index -> weight; one output only; the class of a one-hot row is its argmax)."""
    compiled = model.compiled
    sws = compiled.split_sample_weights(sample_weight, n, what)
    if class_weight is None:
        return sws
    if not isinstance(class_weight, dict):
        raise TypeError(f"{what}: class_weight must be a dict {{class index: weight}}, got {type(class_weight).__name__}")
    if len(compiled.names) > 1:
        raise ValueError(f"{what}: class_weight is only supported for models with a single output")
    if sample_weight is not None:
        raise ValueError(f"{what}: pass class_weight or sample_weight, not both")
    y = as_numpy(ys_raw[0], "y")
    if y.ndim > 1:
        y = np.argmax(y, axis=-1) if y.shape[-1] != 1 else y[..., 0]
    if y.ndim != 1:
        raise ValueError(f"{what}: class_weight needs one class per sample (targets of shape {y.shape})")
    try:
        table = {int(k): float(v) for k, v in class_weight.items()}
    except (TypeError, ValueError):
        raise TypeError(f"{what}: class_weight keys must be class indices and values numbers") from None
    cls = np.round(y).astype(np.int64)
    w = np.ones(n, np.float32)
    for c, v in table.items():
        w[cls == c] = v
    return [check_sample_weight(w, n, what)]


def _prepare_targets(model, inputs, y, what):
    if y is None:
        raise ValueError(f"{what}: y (the targets) is required")
    ys = model.compiled.split_targets(y, what)
    for k, t in zip(model.compiled.names, ys):
        t_len = len(t) if hasattr(t, "__len__") else None
        if t is not None and t_len != inputs.n:
            label = "y" if len(ys) == 1 else f"y[{k!r}]"
            raise ValueError(f"{what}: x and {label} have different numbers of samples ({inputs.n} and {t_len})")
    return model.compiled.prepare_targets(ys)


def _prepare_xy(model, x, y, what, sample_weight=None, class_weight=None):
    """(inputs, prepared targets per output, sample weights per output or None)."""
    inputs = _Inputs(model, x, what)
    _bind(model, inputs)
    return _prepare_bound(model, inputs, y, what, sample_weight, class_weight)


def _prepare_bound(model, inputs, y, what, sample_weight=None, class_weight=None):
    """_prepare_xy's rest once the model is bound: reads the model only, so a data thread may
    run it while the model trains (trainers/stream_loop.py)."""
    ys = _prepare_targets(model, inputs, y, what)
    if sample_weight is None and class_weight is None:
        return inputs, ys, None
    raw = model.compiled.split_targets(y, what)
    return inputs, ys, _sample_weights(model, raw, inputs.n, sample_weight, class_weight, what)


def _prepare_fit(model, x, y, validation_split, validation_data, sample_weight=None, class_weight=None):
    """Check and convert the data, split off the validation set, lay out the flat parameter
    buffer and build the optimizer and metrics."""
    inputs, ys, sws = _prepare_xy(model, x, y, "fit", sample_weight, class_weight)
    val = None
    if callable(validation_data):    # batches from a stream: stream_loop evaluates them
        val = validation_data
    elif validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise ValueError("fit: validation_data must be a tuple (x_val, y_val) or (x_val, y_val, sample_weight_val)")
        vsw = validation_data[2] if len(validation_data) == 3 else None
        val = _prepare_xy(model, validation_data[0], validation_data[1], "fit (validation_data)", vsw)
    elif validation_split > 0:
        n = inputs.n
        n_val = int(n * validation_split)
        if n_val == 0 or n_val == n:
            raise ValueError(f"fit: validation_split={validation_split} leaves no training or validation samples")
        cut = n - n_val       # Keras takes the last samples, before shuffling
        vin = _Sliced(inputs, cut, n)
        val = (vin, [None if t is None else t[cut:] for t in ys],
               None if sws is None else [None if w is None else w[cut:] for w in sws])
        inputs = _Sliced(inputs, 0, cut)
        ys = [None if t is None else t[:cut] for t in ys]
        sws = None if sws is None else [None if w is None else w[:cut] for w in sws]
    model._consolidate()
    # Where each weight starts in the flat buffer: clipnorm clips each weight on its own.
    model.optimizer.build(model._params.size, [off for _, _, off, _ in model._slices] + [model._params.size],
                          like=model._params)
    return _FitData(inputs, ys, val, sws)


class _Sliced:
    """Rows a:b of an _Inputs."""

    def __init__(self, inputs, a, b):
        self.arrays = [x[a:b] for x in inputs.arrays]
        self.rebuild = inputs.rebuild
        self.n = b - a


def train(model, run, data, batch_size, epochs, verbose, callbacks, shuffle, initial_epoch, val_batch_size,
          validation_freq):
    """fit's epoch loop. `run` says what differs between one process (OneProcess) and one rank
    of a data-parallel job (kilnet.distributed._Rank): the epoch order, which samples of each
    batch are this process's, and how the logs are summed."""
    n, steps = data.n, run.steps
    verbose = run.verbosity(verbose)
    history = History()
    params = {"epochs": epochs, "steps": steps, "verbose": verbose, "batch_size": batch_size, "samples": n,
              **run.params}
    user_cbs = list(callbacks or [])
    # On the GPU the per-batch losses stay on the device and the logs are only assembled
    # when something looks at them: the step never waits for the GPU otherwise.
    batch_logs_wanted = run.any_rank(any(
        isinstance(cb, Callback)   # anything else: CallbackList below raises a clear TypeError
        and (type(cb).on_train_batch_end is not Callback.on_train_batch_end
             or "on_train_batch_end" in vars(cb))   # LambdaCallback's hooks
        for cb in user_cbs))
    cbs = CallbackList(run.callbacks(user_cbs) + [history], model, params)
    model.history = history
    model.stop_training = False
    custom = model._overrides("train_step")
    on_gpu = model.device != "cpu" and not custom
    xp = xp_of_device(model.device)
    n_in = len(data.inputs.arrays)
    targets = [t for t in data.ys if t is not None]
    feed = _Feed(data.arrays(), min(batch_size, n), model.device)
    compiled = model.compiled
    metrics = compiled.fresh_metrics()
    rng = get_rng()
    nan_warned = False
    logs = None
    run.start(model, batch_logs_wanted, verbose)
    try:
        cbs.on_train_begin({})
        for epoch in range(initial_epoch, epochs):
            cbs.on_epoch_begin(epoch, {})
            for m in metrics:
                m.reset_state()
            compiled.tracker.reset_state()
            feed.start_epoch(run.order(rng, shuffle))
            loss_sum, seen, t0 = 0.0, 0, time.perf_counter()
            dev_losses = xp.zeros(steps, np.float32) if on_gpu else None
            sizes = np.zeros(steps, np.float32)
            bar = _Progress(epoch, epochs, steps, verbose)
            custom_logs = None
            part_sums = np.zeros(len(compiled.names)) if len(compiled.names) > 1 else None
            for step in range(steps):
                a, b = run.begin_step(step)   # this process's samples of the step, in epoch order
                cbs.on_train_batch_begin(step, {})
                if b > a:
                    xs, ybs, swb = _split_batch(feed.batch(a, b), n_in, data.ys, data.sws)
                    xb = data.inputs.rebuild(xs)
                    if custom:
                        custom_logs = _logs_dict(model.train_step(_user_data(compiled, xb, ybs, swb)))
                        loss = float(custom_logs.get("loss", 0.0))
                    else:
                        loss, preds = default_train_step(model, (xb, ybs, swb),
                                                         dev_losses[step:step + 1] if on_gpu else None)
                        compiled.update_metrics(metrics, preds, ybs, swb)
                        if part_sums is not None:
                            part_sums += [0.0 if p is None else float(p.value) * (b - a) for p in compiled.last_parts]
                else:
                    loss = run.empty_step(model)
                loss_sum += loss * (b - a)
                sizes[step] = b - a
                seen += b - a
                if run.logs_due(step, bar):
                    if custom_logs is not None:
                        logs = dict(custom_logs)
                    else:
                        extra = float(dev_losses[:step + 1] @ xp.asarray(sizes[:step + 1])) if on_gpu else 0.0
                        logs = run.logs(loss_sum + extra, seen, metrics)
                    if not nan_warned and not math.isfinite(logs.get("loss", 0.0)):
                        nan_warned = True
                        _warn_nan(logs["loss"], epoch, step)
                    cbs.on_train_batch_end(step, logs)
                    bar.update(step + 1, logs)
                if run.stop_after_step(model):
                    break
            if on_gpu:   # the one wait for the GPU per epoch
                host_losses = run.fetch(dev_losses)
                done = int(np.count_nonzero(sizes))
                if not nan_warned and not np.isfinite(host_losses[:done]).all():
                    nan_warned = True
                    bad = int(np.argmin(np.isfinite(host_losses[:done])))
                    _warn_nan(float(host_losses[bad]), epoch, bad)
                loss_sum += float(host_losses[:done].astype(np.float64) @ sizes[:done])
            logs = dict(custom_logs) if custom_logs is not None else run.logs(loss_sum, seen, metrics)
            if part_sums is not None and not custom:
                logs = _with_output_losses(compiled, logs, part_sums / max(seen, 1))
            if not nan_warned and not math.isfinite(logs.get("loss", 0.0)):   # another rank's loss
                nan_warned = True
                _warn_nan(logs["loss"], epoch, steps - 1)
            run.epoch_end(model)
            if data.val is not None and (epoch + 1) % validation_freq == 0:
                vals = data.val(model, val_batch_size) if callable(data.val) else \
                    run.evaluate(model, data.val, val_batch_size, _evaluate_arrays)
                if vals is not None:   # None: a validation stream with nothing left (it warned)
                    logs.update({"val_" + k: v for k, v in zip(_eval_names(model), vals)})
            bar.finish(logs, time.perf_counter() - t0)
            cbs.on_epoch_end(epoch, logs)
            model.stop_training = run.any_rank(model.stop_training)
            if model.stop_training:
                break
        cbs.on_train_end(logs if epochs > initial_epoch else None)
    finally:
        run.finish(model)
    return history


def _full_targets(ys, batch):
    """The per-output target batches, None where an output has no loss."""
    it = iter(batch)
    return [None if t is None else next(it) for t in ys]


def _user_targets(compiled, ybs):
    return ybs[0] if len(ybs) == 1 else dict(zip(compiled.names, ybs))


def _user_data(compiled, xb, ybs, swb):
    """What a custom train_step/test_step gets: (x, y), or (x, y, sample_weight) as in Keras."""
    if swb is None:
        return xb, _user_targets(compiled, ybs)
    return xb, _user_targets(compiled, ybs), _user_targets(compiled, swb)


def _logs_dict(logs):
    if not isinstance(logs, dict):
        raise TypeError(f"train_step/test_step must return a dict of logs, got {type(logs).__name__}")
    return {k: float(v.value if isinstance(v, Tensor) else v) for k, v in logs.items()}


def _with_output_losses(compiled, logs, parts):
    """Multi-output logs in Keras's order: loss, <output>_loss..., metrics."""
    out = {"loss": logs["loss"]}
    out.update({f"{k}_loss": float(v) for k, v, l in zip(compiled.names, parts, compiled.losses) if l is not None})
    out.update({k: v for k, v in logs.items() if k != "loss"})
    return out


def _eval_names(model):
    return model.compiled.log_names() if len(model.compiled.names) > 1 else \
        ["loss"] + [m.name for m in model.compiled.metric_objects()]


# ---------------------------------------------------------------------- evaluate / predict
def evaluate(model, x, y, batch_size, verbose, sample_weight, return_dict):
    model._require_compiled("evaluate")
    batch_size = _check_batch_size(batch_size, "evaluate")
    with model._guard("evaluate"):
        values = _evaluate_arrays(model, _prepare_xy(model, x, y, "evaluate", sample_weight), batch_size)
    names = _eval_names(model)
    if verbosity(verbose):
        print(" - ".join(f"{k}: {v:.4f}" for k, v in zip(names, values)), flush=True)
    if return_dict:
        return dict(zip(names, values))
    return values[0] if len(values) == 1 else values


def _evaluate_arrays(model, prepared, batch_size):
    """[loss, (per-output losses,) metrics...] over prepared data (inputs, targets, sample
    weights or None), in batches."""
    inputs, ys, sws = prepared
    compiled = model.compiled
    metrics = _metric_copies(compiled)
    n = inputs.n
    n_out = len(compiled.names)
    feed = _Feed(_batch_arrays(inputs, ys, sws), min(batch_size, n), model.device)
    feed.start_epoch(None)
    n_in = len(inputs.arrays)
    custom = model._overrides("test_step")
    totals = np.zeros(1 + (n_out if n_out > 1 else 0), np.float64)
    st = _step_state(model, "test")
    for i in range(0, n, batch_size):
        j = min(i + batch_size, n)
        xs, ybs, swb = _split_batch(feed.batch(i, j), n_in, ys, sws)
        xb = inputs.rebuild(xs)
        if custom:
            logs = _logs_dict(model.test_step(_user_data(compiled, xb, ybs, swb)))
            totals[0] += logs.get("loss", 0.0) * (j - i)
            continue
        total, parts, preds = _test_batch(model, st, xb, ybs, swb)
        totals[0] += float(total.value) * (j - i)
        if n_out > 1:
            totals[1:] += [0.0 if p is None else float(p.value) * (j - i) for p in parts]
        compiled.update_metrics(metrics, preds, ybs, swb)
    totals /= n
    penalty = regularizers_mod.penalties(model._flat_layers(), grads=False) if model.trainable else 0.0   # as Keras
    totals[0] += penalty
    return [float(v) for v in totals] + [m.result() for m in metrics]


def _metric_copies(compiled):
    """Fresh copies of the compiled metrics: evaluating leaves fit's running metrics alone."""
    metrics = [type(m).__new__(type(m)) for m in compiled.metric_objects()]
    for m, src in zip(metrics, compiled.metric_objects()):
        m.__dict__.update({k: v for k, v in src.__dict__.items() if not isinstance(v, np.ndarray)})
        m.reset_state()
    return metrics


def _test_batch(model, st, xb, ybs, swb):
    """(total loss Tensor, per-output loss Tensors, per-output predictions) of one batch."""
    with using_pool(st.pool):
        y_pred = model(xb, training=False)
        return model.compiled.step_loss(y_pred, ybs, st.bufs, None, swb)


def predict(model, x, batch_size, whole=False):
    """Outputs for x in batches of batch_size (all at once with whole=True): numpy arrays in
    the structure of the model's outputs."""
    with model._guard("predict"):
        inputs = _Inputs(model, x, "predict")
        batch_size = inputs.n if whole else _check_batch_size(batch_size, "predict")
        batch_size = max(1, batch_size)
        if not model.built:
            _bind_build_only(model, inputs)
        model._consolidate()
        feed = _Feed(inputs.arrays, min(batch_size, inputs.n), model.device)
        feed.start_epoch(None)
        st = _step_state(model, "predict")
        outs, structure = None, None
        for i in range(0, inputs.n, batch_size):
            j = min(i + batch_size, inputs.n)
            xb = inputs.rebuild(feed.batch(i, j))
            with using_pool(st.pool):
                y = model(xb, training=False)
            leaves = node_mod.flatten(y)
            if outs is None:
                structure = y
                # float outputs as float32, or as the bfloat16/float16 a mixed-precision output has (Keras)
                outs = [np.empty((inputs.n,) + tuple(t.shape[1:]),
                                 t.dtype if t.dtype.kind != "f" or t.dtype == np.float16 else np.float32)
                        for t in leaves]
            for o, t in zip(outs, leaves):
                v = t.value
                o[i:j] = v if isinstance(v, np.ndarray) else v.get()
    return _restructure(structure, outs)


def _bind_build_only(model, inputs):
    probe = inputs.rebuild([a[:1] for a in inputs.arrays])
    model(probe, training=False)


def _restructure(structure, leaves):
    it = iter(leaves)
    return node_mod.map_structure(lambda _: next(it), structure)


def train_on_batch(model, x, y, return_dict, sample_weight=None, class_weight=None):
    model._require_compiled("train_on_batch")
    with model._exclusive("train_on_batch", reentrant=False):
        inputs, ys, sws = _prepare_xy(model, x, y, "train_on_batch", sample_weight, class_weight)
        model.optimizer.build(model._params.size, [off for _, _, off, _ in model._slices] + [model._params.size],
                              like=model._params)
        xb = inputs.rebuild(_on_device(model, inputs.arrays))
        ybs = _on_device(model, ys)
        swb = None if sws is None else _on_device(model, sws)
        if model._overrides("train_step"):
            logs = _logs_dict(model.train_step(_user_data(model.compiled, xb, ybs, swb)))
        else:
            metrics = model.compiled.fresh_metrics()
            loss, preds = default_train_step(model, (xb, ybs, swb))
            model.compiled.update_metrics(metrics, preds, ybs, swb)
            logs = {"loss": loss, **{m.name: m.result() for m in metrics}}
    return logs if return_dict else (list(logs.values()) if len(logs) > 1 else next(iter(logs.values())))


def test_on_batch(model, x, y, return_dict, sample_weight=None):
    model._require_compiled("test_on_batch")
    with model._guard("test_on_batch"):
        prepared = _prepare_xy(model, x, y, "test_on_batch", sample_weight)
        values = _evaluate_arrays(model, prepared, prepared[0].n)
    names = _eval_names(model)
    if return_dict:
        return dict(zip(names, values))
    return values if len(values) > 1 else values[0]


def _on_device(model, arrays):
    if model.device == "cpu":
        return arrays
    from kilnet.backend import to_device
    return [None if a is None else to_device(a, model.device) for a in arrays]


class _ArrayFeed:
    """Hands out batches of one array (x[i:j] in epoch order) on the model's device.

    CPU: gathered with take into a reused buffer. GPU: when the array fits comfortably in free
    GPU memory it is copied there once and batches are gathered on the device (no transfer per
    step); otherwise each batch is gathered on the host and copied over."""

    def __init__(self, x, batch, device):
        self.x, self.device = x, device
        self.on_gpu = device != "cpu"
        # A memmap (np.memmap, _memmap_input) is read batch by batch into xb, float64 or bool
        # ones converted to float32 on the way; its slices are never handed out.
        self.cast = x.dtype.kind in "fb" and x.dtype != np.float32
        self.copy = isinstance(x, np.memmap)
        self.xb = np.empty((batch,) + x.shape[1:], np.float32 if self.cast else x.dtype)
        self.resident = False
        if self.on_gpu:
            import cupy
            self.cp = cupy
            free, _ = cupy.cuda.runtime.memGetInfo()
            if x.nbytes < 0.25 * free and not self.cast:
                self.x_dev = cupy.asarray(x)
                self.resident = True
            self.xb_dev = cupy.empty(self.xb.shape, self.xb.dtype)

    def start_epoch(self, order, order_dev=None):
        """order: a permutation of the samples, or None for x's own order (order_dev: the same
        on the GPU, made once for all arrays)."""
        self.order, self.order_dev = order, order_dev

    def batch(self, i, j):
        k = j - i
        if k > self.xb.shape[0]:   # a Poisson batch (DP-SGD) larger than batch_size
            self.xb = np.empty((k,) + self.xb.shape[1:], self.xb.dtype)
            if self.on_gpu:
                self.xb_dev = self.cp.empty(self.xb.shape, self.xb.dtype)
        if self.resident:
            if self.order is None:
                return self.x_dev[i:j]
            return self.cp.take(self.x_dev, self.order_dev[i:j], axis=0, out=self.xb_dev[:k])
        if self.order is None and not self.on_gpu and not self.copy:
            return self.x[i:j]
        xb = self.xb[:k]
        if self.order is None:
            xb[...] = self.x[i:j]
        elif self.cast:
            xb[...] = self.x.take(self.order[i:j], axis=0)
        else:
            # mode='clip' (the indices are always in range): with the default 'raise', numpy
            # gathers into a temporary batch and copies it to out, an allocation per step
            self.x.take(self.order[i:j], axis=0, out=xb, mode="clip")
        if not self.on_gpu:
            return xb
        self.xb_dev[:k].set(xb)
        return self.xb_dev[:k]


class _Buffers:
    """Reusable model-level buffers (loss gradient, probabilities), views for partial batches."""

    def __init__(self, xp=np):
        self._xp = xp
        self._bufs = {}
        self._last = {}

    def get(self, key, shape, n):
        buf = self._bufs.get(key)
        if buf is None or buf.shape[1:] != tuple(shape[1:]) or buf.shape[0] < n:
            buf = self._bufs[key] = self._xp.empty((n,) + tuple(shape[1:]), np.float32)
        view = buf if buf.shape[0] == n else buf[:n]
        self._last[key] = view
        return view

    def last(self, key):
        return self._last[key]



def _check_batch_size(batch_size, what):
    if batch_size is None:
        return 32
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"{what}: batch_size must be a positive int, got {batch_size!r}")
    return int(batch_size)


def _warn_nan(loss, epoch, step):
    warnings.warn(f"fit: the loss became {loss} at epoch {epoch + 1}, batch {step}; the "
                  "weights are no longer finite (add callbacks.TerminateOnNaN() to stop there)",
                  RuntimeWarning, stacklevel=5)   # _warn_nan, train, trainer.fit, Model.fit, the caller


