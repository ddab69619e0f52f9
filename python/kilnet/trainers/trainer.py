"""Sequential: a stack of layers with Keras's compile / fit / evaluate / predict / save.

The training step runs the layers' forward in order, the loss gives the first gradient, the
layers' backward runs in reverse, and the optimizer updates every trainable parameter in one
call on the model's flat parameter buffer. Batches are gathered into reused buffers, so the
step allocates no array memory once the first batch has run.
"""
from __future__ import annotations

import contextlib
import functools
import math
import sys
import threading
import time
import warnings

import numpy as np

from kilnet import losses as losses_mod
from kilnet import metrics as metrics_mod
from kilnet import optimizers as optimizers_mod
from kilnet import regularizers as regularizers_mod
from kilnet.backend import current_device, normalize_device, to_device, xp_of_device
from kilnet.callbacks import Callback, CallbackList, History
from kilnet.layers.activation import ActivatedLayer
from kilnet.layers.base import Layer, unique_name
from kilnet.layers.core import InputLayer
from kilnet.utils import get_rng, to_float32

__all__ = ["Sequential", "load_model"]


class Sequential:
    """A linear stack of layers: `Sequential([Conv2D(...), Flatten(), Dense(10)])`."""

    def __init__(self, layers=None, name=None, trainable=True):
        self.name = name or unique_name("sequential")
        self.layers: list[Layer] = []
        self.trainable = bool(trainable)
        self.built = False
        self.device = current_device()      # 'cpu' or 'cuda': where weights and steps live
        self.input_shape = None
        self.optimizer = None
        self.loss = None
        self.compiled_metrics: list = []
        self.history = None
        self.stop_training = False
        self._busy = threading.Lock()       # held while fit runs: predict/evaluate refuse then
        self._state_lock = threading.Lock() # guards _readers
        self._readers = 0                   # predict/evaluate calls running now: fit refuses then
        self._layout_key = None
        self._params = np.zeros(0, np.float32)
        self._grads = np.zeros(0, np.float32)
        self._slices: list = []
        self._declared_input = None
        self._grad_sync = None    # kilnet.distributed.GradientSync while fit(distributed=True) runs
        self._auto_build = True   # build as soon as the input shape is known, as Keras does
        if layers is not None:
            if isinstance(layers, Layer):
                layers = [layers]
            for layer in layers:
                self.add(layer)

    # ------------------------------------------------------------------ structure
    def add(self, layer: Layer) -> None:
        """Append a layer (an InputLayer only declares the input shape)."""
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add expects a kilnet layer, got {type(layer).__name__}")
        if isinstance(layer, InputLayer):
            if self.layers:
                raise ValueError("an InputLayer can only come first in a Sequential model")
            self._declared_input = layer._input_shape
            if self._auto_build and self.layers:
                self.build()
            return
        if any(l.name == layer.name for l in self.layers):
            raise ValueError(f"a layer named {layer.name!r} is already in the model; layer names must be unique")
        if not self.layers and layer._input_shape is not None:
            self._declared_input = layer._input_shape
        self.layers.append(layer)
        self.built = False
        if self._auto_build and self._declared_input is not None:
            self.build()

    def pop(self) -> Layer:
        if not self.layers:
            raise ValueError("pop: the model has no layers")
        self.built = False
        return self.layers.pop()

    def build(self, input_shape=None, initialize=True) -> None:
        """Create every layer's weights for inputs of shape (batch, *input_shape[1:])."""
        if not self.layers:
            raise ValueError("the model has no layers; add some before building it")
        if input_shape is None:
            if self._declared_input is None:
                raise ValueError("the model does not know its input shape: pass input_shape= to the "
                                 "first layer, or call fit/predict (which build from the data)")
            input_shape = (None, *self._declared_input)
        shape = (None, *tuple(input_shape)[1:])
        for layer in self.layers:
            if layer.built and layer.input_shape is not None and tuple(layer.input_shape[1:]) != tuple(shape[1:]):
                raise ValueError(f"layer {layer.name!r} was built for input {layer.input_shape} but now gets {shape}")
            shape = layer.output_shape if layer.built else layer._build(shape, initialize=initialize)
        self.input_shape = (None, *tuple(input_shape)[1:])
        self.built = True
        self._layout_key = None
        self._consolidate()

    def to(self, device):
        """Move the model (weights, gradients, optimizer state) to 'cpu' or 'cuda'; returns the
        model. fit/evaluate/predict keep taking numpy arrays and return numpy results."""
        dev = normalize_device(device)
        if dev == self.device:
            return self
        self.device = dev
        if self.built:
            self._layout_key = None
            self._consolidate()
        return self

    @property
    def output_shape(self):
        return self.layers[-1].output_shape if self.built else None

    def _consolidate(self) -> None:
        """Move every trainable weight into one flat buffer (the layers keep views into it) and
        every gradient into another, so the optimizer makes one call per step."""
        key = (self.device,) + tuple((id(l), l.trainable and self.trainable) for l in self.layers)
        if key == self._layout_key:
            return
        dev, xp = self.device, xp_of_device(self.device)
        for layer in self.layers:
            if layer.device != dev:
                layer._move_to(dev)
        specs = [(l, s) for l in self.layers for s in l._specs
                 if s.trainable and l.trainable and self.trainable]
        n = sum(math.prod(s.shape) for _, s in specs)
        params = xp.empty(n, np.float32)
        grads = xp.zeros(n, np.float32)
        slices, off = [], 0
        for layer, s in specs:
            size = math.prod(s.shape)
            view = params[off:off + size].reshape(s.shape)
            view[...] = to_device(getattr(layer, s.attr), dev)
            setattr(layer, s.attr, view)
            setattr(layer, "d" + s.attr, grads[off:off + size].reshape(s.shape))
            slices.append((layer, s.attr, off, size))
            off += size
        # Frozen weights leave the flat buffer and get private storage again.
        in_flat = {(id(l), s.attr) for l, s in specs}
        for layer in self.layers:
            for s in layer._specs:
                if (id(layer), s.attr) not in in_flat:
                    setattr(layer, s.attr, to_device(getattr(layer, s.attr), dev).copy())
        self._params, self._grads, self._slices = params, grads, slices
        self._layout_key = key
        if self.optimizer is not None and any(v.size != n for v in self.optimizer.state.values()):
            self.optimizer.state = {}
        if self.optimizer is not None and self.optimizer.state:
            self.optimizer.state = {k: to_device(v, dev) for k, v in self.optimizer.state.items()}

    # ------------------------------------------------------------------ compile
    def compile(self, optimizer="rmsprop", loss=None, metrics=None, loss_weights=None,
                weighted_metrics=None, run_eagerly=False, steps_per_execution=1, jit_compile="auto",
                auto_scale_loss=True):
        """Configure training: optimizer, loss and metrics by object or Keras name."""
        if loss is None:
            raise ValueError("compile: a loss is required (e.g. loss='sparse_categorical_crossentropy')")
        if loss_weights is not None or weighted_metrics is not None:
            raise ValueError("compile: loss_weights and weighted_metrics are not supported")
        self.optimizer = optimizers_mod.get(optimizer)
        self.loss = losses_mod.get(loss)
        self._loss_id = loss if isinstance(loss, str) else None
        if metrics is None:
            metrics = []
        if isinstance(metrics, (str, metrics_mod.Metric)):
            metrics = [metrics]
        if isinstance(metrics, dict):
            raise ValueError("compile: metrics as a dict (multi-output) is not supported")
        self._metric_ids = list(metrics)
        self.compiled_metrics = self._make_metrics()

    def _make_metrics(self):
        units = self.layers[-1].output_shape[-1] if self.built and self.layers else None
        return [metrics_mod.get(m, loss=self.loss, output_units=units) for m in self._metric_ids]

    def _require_compiled(self, what):
        if self.loss is None or self.optimizer is None:
            raise RuntimeError(f"{what}: the model must be compiled first: model.compile(optimizer=..., loss=...)")

    def _fused(self) -> bool:
        """True when the last layer's activation and the loss fuse (softmax/sigmoid + CE)."""
        last = self.layers[-1]
        return (isinstance(last, ActivatedLayer) and not self.loss.from_logits
                and self.loss.fuses_with == last.activation)

    # ------------------------------------------------------------------ input checks
    def _prepare_x(self, x, what):
        x = to_float32(x, "x")
        if not self.built:
            if self._declared_input is not None and tuple(x.shape[1:]) != tuple(self._declared_input):
                raise ValueError(f"{what}: the model expects inputs of shape (batch, "
                                 f"{', '.join(map(str, self._declared_input))}), got {x.shape}")
            self.build((None, *x.shape[1:]))
        elif tuple(x.shape[1:]) != tuple(self.input_shape[1:]):
            raise ValueError(f"{what}: the model expects inputs of shape (batch, "
                             f"{', '.join(map(str, self.input_shape[1:]))}), got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError(f"{what}: x contains NaN or Inf")
        return x

    def _prepare_xy(self, x, y, what):
        x = self._prepare_x(x, what)
        if y is None:
            raise ValueError(f"{what}: y (the targets) is required")
        y_len = len(y) if hasattr(y, "__len__") else None
        if y_len != len(x):
            raise ValueError(f"{what}: x and y have different numbers of samples ({len(x)} and {y_len})")
        return x, self.loss.prepare_targets(y, self.layers[-1].output_shape)

    # ------------------------------------------------------------------ the steps
    def _forward(self, xb, training):
        """Forward through all layers; with a fused loss the last layer stops at its logits."""
        h = xb
        for layer in self.layers[:-1]:
            h = layer.forward(h, training)
        last = self.layers[-1]
        return last.forward_linear(h, training) if self._fused() else last.forward(h, training)

    def _loss_and_grad(self, out, yb, probs, grad, loss_out=None):
        """(loss, predictions). With loss_out (a 1-element GPU array) the loss is written there
        on the device and loss is None: the step does not wait for the GPU."""
        if self._fused():
            return self.loss.compute_from_logits(out, yb, probs, grad, out=loss_out), probs
        return self.loss.compute(out, yb, grad, out=loss_out), out

    def _backward(self, grad):
        last = self.layers[-1]
        first = self._first_trainable
        sync = self._grad_sync    # distributed: starts each bucket's reduction once backward made it
        g = last.backward_linear(grad, len(self.layers) - 1 > first) if self._fused() else \
            last.backward(grad, len(self.layers) - 1 > first)
        if sync is not None:
            sync.layer_done(len(self.layers) - 1)
        for i in range(len(self.layers) - 2, first - 1, -1):
            g = self.layers[i].backward(g, need_dx=i > first)
            if sync is not None:
                sync.layer_done(i)

    def train_on_batch_arrays(self, xb, yb, bufs, loss_out=None):
        """One optimizer step on a prepared batch (on the model's device); returns (loss,
        predictions for metrics). With loss_out (GPU) the batch loss goes there and the returned
        loss is the weight penalty alone (0.0 without regularizers)."""
        n = xb.shape[0]
        self._grads.fill(0.0)   # gradients accumulate in the layers' backward: zero explicitly
        out = self._forward(xb, True)
        loss, pred = self._loss_and_grad(out, yb, bufs.get("probs", out.shape, n), bufs.get("grad", out.shape, n),
                                         loss_out)
        self._backward(bufs.last("grad"))
        if self._grad_sync is not None:
            self._grad_sync.finish()   # distributed: _grads now holds the global batch's gradient
        loss = 0.0 if loss is None else loss
        # Weight penalties (kernel_regularizer=...): Keras adds them to the loss, so their
        # gradients join the weights' before the optimizer clips and applies them.
        if self.trainable:
            loss += regularizers_mod.penalties(self.layers, grads=True)
        self.optimizer.apply(self._params, self._grads)
        return loss, pred

    # ------------------------------------------------------------------ fit
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0, steps_per_epoch=None, validation_steps=None,
            validation_batch_size=None, validation_freq=1, distributed=False):
        """Train for `epochs` epochs; returns a History whose .history holds the per-epoch logs.
        distributed=True: synchronous data parallelism over the ranks of an MPI job, batch_size
        per rank (kilnet.distributed, docs/distributed.md); one process without MPI."""
        self._require_compiled("fit")
        if class_weight is not None or sample_weight is not None:
            raise ValueError("fit: class_weight and sample_weight are not supported yet")
        if steps_per_epoch is not None or validation_steps is not None:
            raise ValueError("fit: steps_per_epoch/validation_steps are not supported (pass arrays)")
        batch_size = _check_batch_size(batch_size, "fit")
        if not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"fit: epochs must be a non-negative int, got {epochs!r}")
        if not 0.0 <= float(validation_split) < 1.0:
            raise ValueError(f"fit: validation_split must be in [0, 1), got {validation_split!r}")
        with self._state_lock:
            if self._readers or not self._busy.acquire(blocking=False):
                raise RuntimeError("fit: this model is already training or predicting in another thread; "
                                   "fit and predict/evaluate cannot run at the same time on one model")
        fit_impl = self._fit
        if distributed:
            from kilnet import distributed as dist
            fit_impl = functools.partial(dist.fit, self)
        try:
            return fit_impl(x, y, batch_size, int(epochs), verbose, callbacks, float(validation_split),
                             validation_data, shuffle, int(initial_epoch), validation_batch_size or batch_size,
                             validation_freq)
        finally:
            self._busy.release()

    def _prepare_fit(self, x, y, validation_split, validation_data):
        """What both training loops (this one and kilnet.distributed's) do before the first
        epoch: check and convert the data, split off the validation set, lay out the flat
        parameter buffer and build the optimizer and metrics. Returns (x, y, val or None)."""
        x, y = self._prepare_xy(x, y, "fit")
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise ValueError("fit: validation_data must be a tuple (x_val, y_val)")
            val = self._prepare_xy(validation_data[0], validation_data[1], "fit (validation_data)")
        elif validation_split > 0:
            n_val = int(len(x) * validation_split)
            if n_val == 0 or n_val == len(x):
                raise ValueError(f"fit: validation_split={validation_split} leaves no training or validation samples")
            val = (x[len(x) - n_val:], y[len(x) - n_val:])     # Keras takes the last samples, before shuffling
            x, y = x[:len(x) - n_val], y[:len(y) - n_val]
        else:
            val = None
        self._consolidate()
        self._first_trainable = next((i for i, l in enumerate(self.layers) if l.trainable_weights and self.trainable),
                                     len(self.layers))
        # Where each weight starts in the flat buffer: clipnorm clips each weight on its own.
        self.optimizer.build(self._params.size, [off for _, _, off, _ in self._slices] + [self._params.size],
                             like=self._params)
        self.compiled_metrics = self._make_metrics()
        return x, y, val

    def _fit(self, x, y, batch_size, epochs, verbose, callbacks, validation_split, validation_data,
             shuffle, initial_epoch, val_batch_size, validation_freq):
        x, y, val = self._prepare_fit(x, y, validation_split, validation_data)
        return self._train(_OneProcess(len(x), batch_size), x, y, val, batch_size, epochs, verbose, callbacks,
                           shuffle, initial_epoch, val_batch_size, validation_freq)

    def _train(self, run, x, y, val, batch_size, epochs, verbose, callbacks, shuffle, initial_epoch,
               val_batch_size, validation_freq):
        """fit's epoch loop, after _prepare_fit. `run` says what differs between one process
        (_OneProcess) and one rank of a data-parallel job (kilnet.distributed._Rank): the epoch
        order, which samples of each batch are this process's, and how the logs are summed."""
        n, steps = len(x), run.steps
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
        cbs = CallbackList(run.callbacks(user_cbs) + [history], self, params)
        self.history = history
        self.stop_training = False
        on_gpu = self.device != "cpu"
        xp = xp_of_device(self.device)
        bufs = _Buffers(xp)
        feed = _Feed(x, y, min(batch_size, n), self.device)
        metrics = self.compiled_metrics
        names = ["loss"] + [m.name for m in metrics]
        rng = get_rng()
        nan_warned = False
        logs = None
        run.start(self, batch_logs_wanted, verbose)
        try:
            cbs.on_train_begin({})
            for epoch in range(initial_epoch, epochs):
                cbs.on_epoch_begin(epoch, {})
                for m in metrics:
                    m.reset_state()
                feed.start_epoch(run.order(rng, shuffle))
                loss_sum, seen, t0 = 0.0, 0, time.perf_counter()
                dev_losses = xp.zeros(steps, np.float32) if on_gpu else None
                sizes = np.zeros(steps, np.float32)
                bar = _Progress(epoch, epochs, steps, verbose)
                for step in range(steps):
                    a, b = run.begin_step(step)   # this process's samples of the step, in epoch order
                    cbs.on_train_batch_begin(step, {})
                    if b > a:
                        xb, yb = feed.batch(a, b)
                        loss, pred = self.train_on_batch_arrays(xb, yb, bufs,
                                                                dev_losses[step:step + 1] if on_gpu else None)
                        for m in metrics:
                            m.update(pred, yb)
                    else:
                        loss = run.empty_step(self)
                    loss_sum += loss * (b - a)
                    sizes[step] = b - a
                    seen += b - a
                    if run.logs_due(step, bar):
                        extra = float(dev_losses[:step + 1] @ xp.asarray(sizes[:step + 1])) if on_gpu else 0.0
                        logs = run.logs(loss_sum + extra, seen, metrics)
                        if not nan_warned and not math.isfinite(logs["loss"]):
                            nan_warned = True
                            _warn_nan(logs["loss"], epoch, step)
                        cbs.on_train_batch_end(step, logs)
                        bar.update(step + 1, logs)
                    if run.stop_after_step(self):
                        break
                if on_gpu:   # the one wait for the GPU per epoch
                    host_losses = run.fetch(dev_losses)
                    done = int(np.count_nonzero(sizes))
                    if not nan_warned and not np.isfinite(host_losses[:done]).all():
                        nan_warned = True
                        bad = int(np.argmin(np.isfinite(host_losses[:done])))
                        _warn_nan(float(host_losses[bad]), epoch, bad)
                    loss_sum += float(host_losses[:done].astype(np.float64) @ sizes[:done])
                logs = run.logs(loss_sum, seen, metrics)
                if not nan_warned and not math.isfinite(logs["loss"]):   # another rank's loss
                    nan_warned = True
                    _warn_nan(logs["loss"], epoch, steps - 1)
                run.epoch_end(self)
                if val is not None and (epoch + 1) % validation_freq == 0:
                    vals = run.evaluate(self, val[0], val[1], val_batch_size)
                    logs.update({"val_" + k: v for k, v in zip(names, vals)})
                bar.finish(logs, time.perf_counter() - t0)
                cbs.on_epoch_end(epoch, logs)
                self.stop_training = run.any_rank(self.stop_training)
                if self.stop_training:
                    break
            cbs.on_train_end(logs if epochs > initial_epoch else None)
        finally:
            run.finish(self)
        return history

    # ------------------------------------------------------------------ evaluate / predict
    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
                 steps=None, callbacks=None, return_dict=False):
        """Loss and metrics on (x, y): a scalar when there are no metrics, else [loss, *metrics]."""
        self._require_compiled("evaluate")
        if sample_weight is not None:
            raise ValueError("evaluate: sample_weight is not supported yet")
        batch_size = _check_batch_size(batch_size, "evaluate")
        with self._guard("evaluate"):
            x, y = self._prepare_xy(x, y, "evaluate")
            values = self._evaluate_arrays(x, y, batch_size)
        names = ["loss"] + [m.name for m in self.compiled_metrics]
        if _verbosity(verbose):
            print(" - ".join(f"{k}: {v:.4f}" for k, v in zip(names, values)), flush=True)
        if return_dict:
            return dict(zip(names, values))
        return values[0] if len(values) == 1 else values

    def _evaluate_arrays(self, x, y, batch_size):
        metrics = self._make_metrics()
        xp = xp_of_device(self.device)
        on_gpu = self.device != "cpu"
        bufs = _Buffers(xp)
        feed = _Feed(x, y, min(batch_size, len(x)), self.device)
        feed.start_epoch(None)
        nb = -(-len(x) // batch_size)
        dev_losses = xp.zeros(nb, np.float32) if on_gpu else None
        sizes = np.zeros(nb, np.float64)
        total = 0.0
        for b, i in enumerate(range(0, len(x), batch_size)):
            xb, yb = feed.batch(i, min(i + batch_size, len(x)))
            out = self._forward(xb, False)
            loss, pred = self._loss_and_grad(out, yb, bufs.get("probs", out.shape, len(xb)), None,
                                             dev_losses[b:b + 1] if on_gpu else None)
            sizes[b] = len(xb)
            if not on_gpu:
                total += loss * len(xb)
            for m in metrics:
                m.update(pred, yb)
        if on_gpu:
            total = float(xp.asnumpy(dev_losses).astype(np.float64) @ sizes)
        penalty = regularizers_mod.penalties(self.layers, grads=False) if self.trainable else 0.0   # as Keras
        return [total / len(x) + penalty] + [m.result() for m in metrics]

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        """Outputs for x, computed in batches; a new float32 numpy array."""
        batch_size = _check_batch_size(batch_size, "predict")
        with self._guard("predict"):
            x = self._prepare_x(x, "predict")
            out = None
            feed = _Feed(x, None, min(batch_size, len(x)), self.device)
            feed.start_epoch(None)
            for i in range(0, len(x), batch_size):
                h, _ = feed.batch(i, min(i + batch_size, len(x)))
                for layer in self.layers:
                    h = layer.forward(h, False)
                if out is None:
                    out = np.empty((len(x),) + h.shape[1:], np.float32)
                out[i:i + len(h)] = h if isinstance(h, np.ndarray) else h.get()
        return out

    def __call__(self, x, training=False):
        return self.predict(x, batch_size=max(1, len(x)))

    def predict_on_batch(self, x):
        return self.predict(x, batch_size=max(1, len(x)))

    @contextlib.contextmanager
    def _guard(self, what):
        """predict/evaluate may run from many threads at once (layer buffers are per thread),
        but never while fit runs, and fit never starts while they run."""
        with self._state_lock:
            if self._busy.locked():
                raise RuntimeError(f"{what}: this model is training in another thread; wait for fit to finish")
            self._readers += 1
        try:
            yield
        finally:
            with self._state_lock:
                self._readers -= 1

    # ------------------------------------------------------------------ weights, config, io
    def count_params(self) -> int:
        return sum(l.count_params() for l in self.layers)

    @property
    def weights(self):
        return [w for l in self.layers for w in l.weights]

    @property
    def trainable_weights(self):
        return [w for l in self.layers for w in l.trainable_weights] if self.trainable else []

    def get_weights(self) -> list:
        return [w for l in self.layers for w in l.get_weights()]

    def set_weights(self, weights) -> None:
        weights = list(weights)
        need = sum(len(l._specs) for l in self.layers)
        if not self.built:
            raise ValueError("set_weights: build the model first (model.build(input_shape) or give input_shape=)")
        if len(weights) != need:
            raise ValueError(f"set_weights: the model has {need} weight arrays, got {len(weights)}")
        i = 0
        for layer in self.layers:
            k = len(layer._specs)
            layer.set_weights(weights[i:i + k])
            i += k

    def get_layer(self, name=None, index=None) -> Layer:
        if index is not None:
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"no layer named {name!r}; layers: {', '.join(l.name for l in self.layers)}")

    def get_config(self) -> dict:
        from kilnet.io import layer_entry
        entries = []
        if self.built or self._declared_input is not None:
            shape = self.input_shape if self.built else (None, *self._declared_input)
            entries.append({"module": "keras.layers", "class_name": "InputLayer",
                            "config": {"batch_shape": list(shape), "dtype": "float32", "sparse": False,
                                       "name": "input_layer"}, "registered_name": None})
        entries += [layer_entry(l) for l in self.layers]
        cfg = {"name": self.name, "trainable": self.trainable,
               "dtype": {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"},
                         "registered_name": None}, "layers": entries}
        if self.built:
            cfg["build_input_shape"] = list(self.input_shape)
        return cfg

    def save(self, filepath, overwrite=True, include_optimizer=True) -> None:
        """Write the model (architecture, weights, optimizer state) to an .h5 file, atomically."""
        from kilnet.io import save_model
        save_model(self, filepath, overwrite=overwrite, include_optimizer=include_optimizer)

    def save_weights(self, filepath, overwrite=True) -> None:
        from kilnet.io import save_model
        save_model(self, filepath, overwrite=overwrite, include_optimizer=False)

    def load_weights(self, filepath) -> None:
        from kilnet.io import load_weights_into
        load_weights_into(self, filepath)

    def export_weights(self, filepath) -> None:
        """Write layers and weights in the binary format C++ programs read (kilnet/export.py)."""
        from kilnet.export import export_weights
        export_weights(self, filepath)

    def summary(self, print_fn=None) -> None:
        """Print the layers, their output shapes and parameter counts, as Keras does."""
        print_fn = print_fn or print
        rows = [(f"{l.name} ({type(l).__name__})", str(l.output_shape) if l.built else "?", f"{l.count_params():,}")
                for l in self.layers]
        w0 = max([len("Layer (type)")] + [len(r[0]) for r in rows]) + 2
        w1 = max([len("Output Shape")] + [len(r[1]) for r in rows]) + 2
        line = "─" * (w0 + w1 + 12)
        print_fn(f'Model: "{self.name}"')
        print_fn(line)
        print_fn(f"{'Layer (type)':<{w0}}{'Output Shape':<{w1}}{'Param #':>10}")
        print_fn(line)
        for r in rows:
            print_fn(f"{r[0]:<{w0}}{r[1]:<{w1}}{r[2]:>10}")
        print_fn(line)
        total = self.count_params()
        trainable = sum(w.size for w in self.trainable_weights)
        print_fn(f" Total params: {total:,}")
        print_fn(f" Trainable params: {trainable:,}")
        print_fn(f" Non-trainable params: {total - trainable:,}")


def load_model(filepath, compile=True):
    """Load a model saved by `model.save` (kilnet or Keras .h5 layout)."""
    from kilnet.io import load_model as _load
    return _load(filepath, compile=compile)


# ---------------------------------------------------------------------- helpers
def _warn_nan(loss, epoch, step):
    warnings.warn(f"fit: the loss became {loss} at epoch {epoch + 1}, batch {step}; the "
                  "weights are no longer finite (add callbacks.TerminateOnNaN() to stop there)",
                  RuntimeWarning, stacklevel=5)   # _warn_nan, _train, _fit or distributed.fit, fit, the caller


class _OneProcess:
    """Where fit's epoch loop (Sequential._train) depends on how many processes train: this is
    one process; kilnet.distributed._Rank overrides each method for one rank of an MPI job."""

    params: dict = {}   # extra entries for the callbacks' params

    def __init__(self, n, global_batch):
        self.n, self.global_batch = n, global_batch
        self.steps = -(-n // global_batch)

    def verbosity(self, verbose):
        return _verbosity(verbose)

    def callbacks(self, cbs):
        return cbs

    def any_rank(self, flag) -> bool:
        return bool(flag)

    def start(self, model, batch_logs_wanted, verbose):
        self.on_gpu = model.device != "cpu"
        self.batch_logs_wanted = batch_logs_wanted

    def order(self, rng, shuffle):
        return rng.permutation(self.n) if shuffle else np.arange(self.n)

    def begin_step(self, step):
        """[a, b): the positions in the epoch order this process trains on at this step."""
        return step * self.global_batch, min((step + 1) * self.global_batch, self.n)

    def empty_step(self, model):
        raise AssertionError("one process never has an empty step")

    def logs_due(self, step, bar) -> bool:
        # on the CPU the figures are at hand; on the GPU only build them when looked at
        return not self.on_gpu or self.batch_logs_wanted or bar.due(step + 1)

    def logs(self, loss_sum, seen, metrics):
        return {"loss": loss_sum / max(seen, 1), **{m.name: m.result() for m in metrics}}

    def stop_after_step(self, model) -> bool:
        return model.stop_training

    def fetch(self, dev_losses):
        return dev_losses.get()

    def epoch_end(self, model):
        pass

    def evaluate(self, model, x, y, batch_size):
        return model._evaluate_arrays(x, y, batch_size)

    def finish(self, model):
        pass


class _Feed:
    """Hands out batches (x[i:j] in epoch order) on the model's device.

    CPU: gathered with np.take into reused buffers. GPU: when x and y fit comfortably in free
    GPU memory they are copied there once and batches are gathered on the device (no transfer
    per step); otherwise each batch is gathered on the host and copied over."""

    def __init__(self, x, y, batch, device):
        self.x, self.y, self.device = x, y, device
        self.on_gpu = device != "cpu"
        self.xb = np.empty((batch,) + x.shape[1:], np.float32)
        self.yb = None if y is None else np.empty((batch,) + y.shape[1:], y.dtype)
        self.resident = False
        if self.on_gpu:
            import cupy
            self.cp = cupy
            free, _ = cupy.cuda.runtime.memGetInfo()
            need = x.nbytes + (0 if y is None else y.nbytes)
            if need < 0.25 * free:
                self.x_dev = cupy.asarray(x)
                self.y_dev = None if y is None else cupy.asarray(y)
                self.resident = True
            self.xb_dev = cupy.empty(self.xb.shape, np.float32)
            self.yb_dev = None if y is None else cupy.empty(self.yb.shape, y.dtype)

    def start_epoch(self, order):
        """order: a permutation of the samples, or None for x's own order."""
        self.order = order
        if self.resident and order is not None:
            self.order_dev = self.cp.asarray(order)

    def batch(self, i, j):
        k = j - i
        if self.resident:
            if self.order is None:
                return self.x_dev[i:j], (None if self.y is None else self.y_dev[i:j])
            idx = self.order_dev[i:j]
            xb = self.cp.take(self.x_dev, idx, axis=0, out=self.xb_dev[:k])
            yb = None if self.y is None else self.cp.take(self.y_dev, idx, axis=0, out=self.yb_dev[:k])
            return xb, yb
        if self.order is None and not self.on_gpu:
            return self.x[i:j], (None if self.y is None else self.y[i:j])
        xb, yb = self.xb[:k], (None if self.y is None else self.yb[:k])
        if self.order is None:
            xb[...] = self.x[i:j]
            if yb is not None:
                yb[...] = self.y[i:j]
        else:
            idx = self.order[i:j]
            # mode='clip' (idx is always in range): with the default 'raise', numpy gathers into
            # a temporary batch and copies it to out, an allocation per step
            np.take(self.x, idx, axis=0, out=xb, mode="clip")
            if yb is not None:
                np.take(self.y, idx, axis=0, out=yb, mode="clip")
        if not self.on_gpu:
            return xb, yb
        self.xb_dev[:k].set(xb)
        if yb is not None:
            self.yb_dev[:k].set(yb)
        return self.xb_dev[:k], (None if yb is None else self.yb_dev[:k])


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


def _verbosity(verbose):
    if verbose == "auto":
        return 1
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 'auto', 0, 1 or 2, got {verbose!r}")
    return verbose


class _Progress:
    """Training feedback per epoch. verbose=1 on a terminal: a live tqdm bar (steps, ETA, running
    loss and metrics; a plain refreshing line when tqdm is not installed). verbose=1 off a
    terminal (CI logs) and verbose=2: one line per epoch. verbose=0: nothing."""

    def __init__(self, epoch, epochs, steps, verbose):
        self.verbose, self.steps = verbose, steps
        self.live = verbose == 1 and sys.stdout.isatty()
        self.t0 = self.last = time.perf_counter()
        self.bar = None
        if not verbose:
            return
        if self.live:
            try:
                from tqdm import tqdm   # imported only when a live bar is wanted
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=steps, desc=f"Epoch {epoch + 1}/{epochs}", unit="step",
                                dynamic_ncols=True, leave=True, file=sys.stdout)
                return
        print(f"Epoch {epoch + 1}/{epochs}", flush=True)

    def due(self, step) -> bool:
        """Whether update() would redraw now (so the GPU loop only builds logs then)."""
        return self.live and (time.perf_counter() - self.last >= 0.1 or step >= self.steps)

    def update(self, step, logs):
        if not self.live:
            return
        now = time.perf_counter()
        if now - self.last < 0.1 and step < self.steps:
            return
        self.last = now
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix_str(_fmt(logs), refresh=True)
            return
        eta = (now - self.t0) / step * (self.steps - step)
        sys.stdout.write(f"\r{step}/{self.steps} - ETA: {eta:.0f}s - " + _fmt(logs))
        sys.stdout.flush()

    def finish(self, logs, seconds):
        if not self.verbose:
            return
        per_step = seconds / max(self.steps, 1) * 1e3
        msg = f"{self.steps}/{self.steps} - {seconds:.1f}s {per_step:.0f}ms/step - " + _fmt(logs)
        if self.bar is not None:
            self.bar.n = self.steps
            self.bar.set_postfix_str(_fmt(logs), refresh=True)
            self.bar.close()
            return
        print(("\r" if self.live else "") + msg, flush=True)


def _fmt(logs):
    return " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
