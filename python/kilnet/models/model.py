"""Model: a Layer that trains. Functional, Sequential and subclassed models all derive from it.

A model holds no training loop (that is kilnet.trainers.trainer) and no graph logic (that is
functional.py / sequential.py / the user's call()). What it owns:
- the flat buffers: every trainable Variable below it becomes a view into one parameter buffer
  and its gradient a view into one gradient buffer, so the optimizer is one fused call;
- compile() state: optimizer, per-output losses and metrics (trainers/compile_utils.py);
- the device it lives on (`to('cuda')`), weights, summary and saving entry points.
"""
from __future__ import annotations

import contextlib
import math
import threading

import numpy as np

from kilnet import optimizers as optimizers_mod
from kilnet import persistence
from kilnet.backend import current_device, normalize_device, to_device, xp_of_device
from kilnet.layers.base import Layer
from kilnet.naming import unique_name
from kilnet.trainers import stream_loop, trainer
from kilnet.trainers.compile_utils import CompiledLoss

__all__ = ["Model"]


class Model(Layer):
    """`Model(inputs, outputs)` builds a functional model; `class M(Model)` with layers made in
    __init__ and a `call(inputs, training=None)` is a subclassed one (as in Keras)."""

    _functional_cls = None   # kilnet.models.functional registers Functional here
    _is_model_class = True   # what a model file may name (kilnet.serialization's registry)

    def __new__(cls, *args, **kwargs):
        if cls is Model and (args or "inputs" in kwargs or "outputs" in kwargs):
            return object.__new__(Model._functional_cls)
        return object.__new__(cls)

    def __init__(self, *args, name=None, trainable=True, **kwargs):
        if args:
            raise TypeError(f"{type(self).__name__}() takes no positional arguments (did you mean "
                            "kilnet.Model(inputs, outputs)?)")
        kwargs.pop("dtype", None)
        super().__init__(name=name or unique_name(_model_base_name(type(self))), trainable=trainable, **kwargs)
        self.device = current_device()      # 'cpu' or 'cuda': where weights and steps live
        self.optimizer = None
        self.compiled = None                # CompiledLoss: losses, weights and metrics per output
        self.history = None
        self.stop_training = False
        self._busy = threading.Lock()       # held while fit runs: predict/evaluate refuse then
        self._busy_owner = None             # the thread holding _busy (its callbacks may use the model)
        self._state_lock = threading.Lock() # guards _readers
        self._readers = 0                   # predict/evaluate calls running now: fit refuses then
        self._layout_key = None
        self._params = np.zeros(0, np.float32)
        self._grads = np.zeros(0, np.float32)
        self._slices: list = []
        self._grad_sync = None    # kilnet.distributed.GradientSync while fit(distributed=True) runs
        self._pools: dict = {}    # per thread and phase: the layers' per-call state (reused buffers)

    # ------------------------------------------------------------------ structure
    @property
    def layers(self) -> list:
        return self._sublayers()

    def get_layer(self, name=None, index=None) -> Layer:
        layers = self.layers
        if index is not None:
            if not -len(layers) <= index < len(layers):
                raise ValueError(f"get_layer: index {index} is out of range for {len(layers)} layers")
            return layers[index]
        for layer in layers:
            if layer.name == name:
                return layer
        raise ValueError(f"no layer named {name!r}; layers: {', '.join(l.name for l in layers)}")

    def build(self, input_shape=None):
        """Subclassed models build on their first call; Functional and Sequential override."""

    def _input_names(self):
        return None    # a subclassed model takes whatever structure its call() takes

    def _check_input_arrays(self, arrays, what):
        """Functional and Sequential models check the arrays against their input shapes."""

    def _overrides(self, method) -> bool:
        """Whether the model's class replaces Model.<method> (a custom train_step, say)."""
        return getattr(type(self), method) is not getattr(Model, method)

    def output_keys(self):
        """The names losses, metrics and targets are keyed by (dict keys for dict outputs, else
        the output layers' names); None while unknown (a subclassed model before its first call)."""
        return None

    def _output_shapes(self):
        return None   # known up front for Functional and built Sequential models

    # ------------------------------------------------------------------ device and flat buffers
    def to(self, device):
        """Move the model (weights, gradients, optimizer state) to 'cpu' or 'cuda'; returns the
        model. fit/evaluate/predict keep taking numpy arrays and return numpy results."""
        dev = normalize_device(device)
        if dev == self.device:
            return self
        self.device = dev
        self._pools = {}
        for layer in self._flat_layers():
            layer.device = dev if layer is not self else layer.device
        if self.built:
            self._layout_key = None
            self._consolidate()
        return self

    def _consolidate(self) -> None:
        """Move every trainable weight into one flat buffer (the layers keep views into it) and
        every gradient into another, so the optimizer makes one call per step."""
        layers = self._flat_layers()
        variables = self._all_variables()
        trainable = {id(v) for v in self.trainable_variables}
        key = (self.device,) + tuple((id(v), id(v) in trainable) for v in variables)
        if key == self._layout_key and all(getattr(l, "_store", None) is self for l in layers):
            return
        dev, xp = self.device, xp_of_device(self.device)
        for layer in layers:
            if layer is not self and (layer.device != dev or (dev != "cpu" and layer._xp is np)):
                layer._move_to(dev)
        train_vars = [v for v in variables if id(v) in trainable]
        n = sum(math.prod(v.shape) for v in train_vars)
        params = xp.empty(n, np.float32)
        grads = xp.zeros(n, np.float32)
        slices, off = [], 0
        for v in train_vars:
            size = math.prod(v.shape)
            view = params[off:off + size].reshape(v.shape)
            view[...] = to_device(v.value, dev)
            setattr(v._owner, v._attr, view)
            setattr(v._owner, "d" + v._attr, grads[off:off + size].reshape(v.shape))
            slices.append((v._owner, v._attr, off, size))
            off += size
        # Frozen weights leave the flat buffer and get private storage again.
        for v in variables:
            if id(v) not in trainable:
                setattr(v._owner, v._attr, to_device(v.value, dev).copy())
        for layer in layers:
            layer._store = self
        self._params, self._grads, self._slices = params, grads, slices
        self._layout_key = key
        opt = self.optimizer
        if opt is not None and any(s.size != n for s in opt.state.values()):
            opt.state = {}
        if opt is not None and opt.state:
            opt.state = {k: to_device(s, dev) for k, s in opt.state.items()}

    def flat_parameters(self):
        """The one buffer holding every trainable weight (the optimizer's state follows its
        layout, model.trainable_variables in order)."""
        self._consolidate()
        return self._params

    # ------------------------------------------------------------------ compile
    def compile(self, optimizer="rmsprop", loss=None, metrics=None, loss_weights=None,
                weighted_metrics=None, run_eagerly=False, steps_per_execution=1, jit_compile="auto",
                auto_scale_loss=True):
        """Configure training: optimizer, loss(es) and metrics by object or Keras name; for
        several outputs loss, loss_weights and metrics may be lists or dicts keyed by output."""
        self.optimizer = optimizers_mod.get(optimizer)
        if auto_scale_loss and self.dtype_policy.name == "mixed_float16" and \
                not isinstance(self.optimizer, optimizers_mod.LossScaleOptimizer):
            # Keras 3 wraps the optimizer of a mixed_float16 model in dynamic loss scaling
            self.optimizer = optimizers_mod.LossScaleOptimizer(self.optimizer, name="loss_scale_optimizer")
        self.compiled = CompiledLoss(loss, loss_weights, metrics, weighted_metrics)
        if self.built and self._output_shapes() is not None:   # else bound on the first batch
            self.compiled.bind(self)

    def get_compile_config(self) -> dict | None:
        """What compile() was given (as Keras 3's get_compile_config, unserialized)."""
        if self.compiled is None:
            return None
        m = self.compiled.metric_spec
        return {"optimizer": self.optimizer, "loss": self.compiled.loss_spec,
                "loss_weights": self.compiled.weight_spec,
                "metrics": [] if m is None else ([m] if isinstance(m, str) else m),
                "weighted_metrics": self.compiled.weighted_spec}

    @property
    def loss(self):
        """The compiled loss (one output), or the list of them."""
        if self.compiled is None:
            return None
        return self.compiled.single_loss()

    @property
    def compiled_metrics(self) -> list:
        return [] if self.compiled is None or not self.compiled.bound else self.compiled.metric_objects()

    @property
    def metrics(self) -> list:
        """The loss tracker and the compiled metrics (what a custom train_step updates)."""
        return [] if self.compiled is None else self.compiled.trackers(self)

    @property
    def metrics_names(self) -> list:
        return [m.name for m in self.metrics]

    def _require_compiled(self, what):
        if self.compiled is None or self.optimizer is None:
            raise RuntimeError(f"{what}: the model must be compiled first: model.compile(optimizer=..., loss=...)")

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The compiled loss of y_pred against y (a Tensor on the tape), as Keras 3's."""
        self._require_compiled("compute_loss")
        if not self.compiled.bound:
            self.compiled.bind(self, y_pred)
        return self.compiled.loss_tensor(y_pred, y, sample_weight)

    # ------------------------------------------------------------------ training entry points
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0, steps_per_epoch=None, validation_steps=None,
            validation_batch_size=None, validation_freq=1, distributed=False):
        """Train for `epochs` epochs; returns a History whose .history holds the per-epoch logs.
        distributed=True: synchronous data parallelism over the ranks of an MPI job, batch_size
        per rank (kilnet.distributed, docs/distributed.md); one process without MPI.
        x may also be a generator/iterator of batches, a kilnet.utils.PyDataset or a torch
        DataLoader (trainers/stream_loop.py), as may validation_data."""
        if stream_loop.is_stream(x):
            return stream_loop.fit(self, x, y, batch_size, epochs, verbose, callbacks, validation_split,
                                   validation_data, shuffle, class_weight, sample_weight, initial_epoch,
                                   steps_per_epoch, validation_steps, validation_batch_size, validation_freq,
                                   distributed)
        val_stream = None
        if stream_loop.is_stream(validation_data):
            validation_data = val_stream = stream_loop.StreamValidation(validation_data, validation_steps)
        try:
            return trainer.fit(self, x, y, batch_size, epochs, verbose, callbacks, validation_split,
                               validation_data, shuffle, class_weight, sample_weight, initial_epoch,
                               steps_per_epoch, validation_steps, validation_batch_size, validation_freq,
                               distributed)
        finally:
            if val_stream is not None:
                val_stream.close()

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
                 steps=None, callbacks=None, return_dict=False):
        """Loss and metrics on (x, y): a scalar when there are no metrics, else [loss, *metrics]."""
        if stream_loop.is_stream(x):
            return stream_loop.evaluate(self, x, y, verbose, sample_weight, steps, return_dict)
        return trainer.evaluate(self, x, y, batch_size, verbose, sample_weight, return_dict)

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        """Outputs for x, computed in batches: a float32 numpy array (a list or dict of them for
        several outputs)."""
        if stream_loop.is_stream(x):
            return stream_loop.predict(self, x, steps)
        return trainer.predict(self, x, batch_size)

    def train_step(self, data):
        """One optimizer step on a batch (x, y); returns the logs. Override it to customise
        fit (as in Keras); the default is the fused step of kilnet.trainers.trainer."""
        return trainer.default_train_step(self, data)

    def test_step(self, data):
        return trainer.default_test_step(self, data)

    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None, return_dict=False):
        return trainer.train_on_batch(self, x, y, return_dict, sample_weight, class_weight)

    def test_on_batch(self, x, y=None, sample_weight=None, return_dict=False):
        return trainer.test_on_batch(self, x, y, return_dict, sample_weight)

    def predict_on_batch(self, x):
        return trainer.predict(self, x, None, whole=True)

    @contextlib.contextmanager
    def _guard(self, what):
        """predict/evaluate may run from many threads at once (layer state is per thread),
        but never while fit runs, and fit never starts while they run."""
        with self._state_lock:
            if self._busy.locked() and self._busy_owner != threading.get_ident():
                raise RuntimeError(f"{what}: this model is training in another thread; wait for fit to finish")
            self._readers += 1
        try:
            yield
        finally:
            with self._state_lock:
                self._readers -= 1

    @contextlib.contextmanager
    def _exclusive(self, what, reentrant=True):
        """Changing the weights (set_weights, load_weights) or training: no other thread may be
        predicting, evaluating or training meanwhile (a clear RuntimeError, never mixed
        results). The thread that runs fit may (its callbacks restore or load weights)."""
        me = threading.get_ident()
        if self._busy_owner == me:
            if not reentrant:
                raise RuntimeError(f"{what}: called while this model is training on this thread (from a callback?)")
            yield
            return
        with self._state_lock:
            if self._readers or not self._busy.acquire(blocking=False):
                raise RuntimeError(f"{what}: this model is in use in another thread (fit, predict or evaluate); "
                                   "wait for it to finish")
            self._busy_owner = me
        try:
            yield
        finally:
            self._busy_owner = None
            self._busy.release()

    # ------------------------------------------------------------------ weights and files
    def count_params(self) -> int:
        return int(sum(math.prod(v.shape) for v in self._all_variables()))

    def set_weights(self, weights, allow_nonfinite=False) -> None:
        if not self.built:
            raise ValueError("set_weights: build the model first (model.build(input_shape) or give input_shape=)")
        weights = list(weights)
        need = len(self._all_variables())
        if len(weights) != need:
            raise ValueError(f"set_weights: the model has {need} weight arrays, got {len(weights)}")
        with self._exclusive("set_weights"):
            super().set_weights(weights, allow_nonfinite=allow_nonfinite)

    def save(self, filepath, overwrite=True, zipped=None, include_optimizer=True, **kwargs) -> None:
        """Write the model (architecture, weights, optimizer state), atomically: `.keras` (the
        Keras 3 archive) or `.h5` (the legacy HDF5 file), by the suffix (docs/saving.md)."""
        with self._guard("save"):
            persistence.saving_api().save_model(self, filepath, overwrite=overwrite, zipped=zipped,
                                                include_optimizer=include_optimizer, **kwargs)

    def save_weights(self, filepath, overwrite=True, max_shard_size=None) -> None:
        """The weights alone: `.weights.h5` in Keras 3's layout, `.h5` in the legacy one."""
        with self._guard("save_weights"):
            persistence.saving_api().save_weights(self, filepath, overwrite=overwrite,
                                                  max_shard_size=max_shard_size)

    def load_weights(self, filepath, skip_mismatch=False, by_name=False, allow_nonfinite=False) -> None:
        """Weights from a .weights.h5, a .keras archive or a legacy .h5 file (by_name and
        skip_mismatch as in Keras)."""
        with self._exclusive("load_weights"):
            persistence.saving_api().load_weights(self, filepath, skip_mismatch=skip_mismatch, by_name=by_name,
                                                  allow_nonfinite=allow_nonfinite)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """A model from its config: a functional graph (layers, input_layers, output_layers)
        becomes a Functional model, as in Keras; a subclassed model gets cls(**config)."""
        from kilnet import serialization
        graph = isinstance(config, dict) and {"layers", "input_layers", "output_layers"} <= set(config)
        if graph and (cls is Model or issubclass(cls, Model._functional_cls)):
            target = Model._functional_cls if cls is Model else cls
            return target.from_config(config, custom_objects=custom_objects)
        with serialization.custom_objects_scope(custom_objects):
            return cls(**config)

    def summary(self, print_fn=None, line_length=None, positions=None, expand_nested=False,
                show_trainable=False, layer_range=None) -> None:
        """Print the layers, their output shapes, parameter counts and (functional models)
        the layers each is connected to, as Keras does."""
        from kilnet.models.summary import print_summary
        print_summary(self, print_fn or print)


def _model_base_name(cls):
    from kilnet.utils import snake_case
    return "functional" if cls.__name__ == "Functional" else snake_case(cls.__name__)
