"""DP-SGD (Abadi et al. 2016, "Deep Learning with Differential Privacy"): per-example gradients
clipped to norm C over all trainable parameters, summed, Gaussian noise of std sigma*C added,
divided by the (expected) batch size, then the wrapped optimizer's update.

    model.compile(optimizer=kilnet.privacy.DPSGD(l2_norm_clip=1.0, noise_multiplier=1.1,
                                                  learning_rate=0.1), loss=...)
    model.compile(optimizer=kilnet.privacy.make_private(kilnet.optimizers.Adam(1e-3), 1.0, 1.1), ...)

The trainer's step hands the batch to `DPOptimizer._private_train_step` (one hook in
trainers/trainer.py). Two ways to the clipped sum:

- fast path (every layer with trainable weights is a Dense or Conv2D, each called once per
  step): one forward and one backward walk in which the layers compute only input gradients;
  each layer's input x and output gradient dz are kept (a fused group's: its input and logits'
  gradient). Per-example squared norms per layer:
    Dense on 2-D inputs ("ghost norm", Goodfellow 2015): ||dW_i||^2 = ||x_i||^2 ||dz_i||^2,
        ||db_i||^2 = ||dz_i||^2 -- nothing per example is materialised; the clipped sum is
        then ONE GEMM x^T diag(s) dz (dz's rows scaled in place) plus a column sum;
    Dense on 3-D+ inputs (sequences): sum_{t,t'} (x_t.x_t')(dz_t.dz_t') or the materialised
        x_i^T dz_i, whichever is cheaper;
    Conv2D: the per-example dW_i ARE materialised (kilnet's conv2d_backward kernel on each
        example, all examples in one call on the CPU (conv2d_backward_per_example), into an
        (N, kh*kw*cin*cout) buffer: 288 floats per example for a 3x3x1x32 layer); the clipped
        sum is then s^T [dW_1 .. dW_N], one small GEMV.
    Conv2D -> Flatten -> Dense run as the fused group (layers/conv_dense.py, on the CPU, the
        conv the model's first layer): the forward never writes the conv's output h; one
        per-example pass (conv_dense_per_example) gives each example's conv gradient and |h_i|^2
        (the Dense kernel's ghost norm |h_i|^2 |dz_i|^2) without writing h or dh either, and
        the Dense kernel's clipped sum h^T diag(s) dz is the fused backward's Dense part on the
        scaled dz. On the canonical CNN at batch 256 this took the DP epoch from ~2.2x to
        ~1.4x a plain one (benchmarks/RESULTS.md).
  s_i = min(1, C / ||g_i||) with ||g_i||^2 the sum over layers.
- fallback (LSTM, Embedding, layers written with kilnet.ops, shared layers, ...): one example
  at a time through the model and the tape, its flat gradient clipped and accumulated. Slow,
  but exact for any model.

Noise: one standard normal draw per trainable parameter per step (`gaussian(rng, n)`), in the
order of the model's flat parameter buffer (model.trainable_variables), scaled by
noise_multiplier * l2_norm_clip: each step draws one 64-bit key from `np.random.default_rng(seed)`
when a seed is given, else from kilnet.utils' generator, and kilnet's Philox4x32-10 + Box-Muller
kernel (kilnet/random.h) expands it into the n values.
(Neither numpy's PCG64 nor Philox is a cryptographically secure generator; see
docs/responsible.md.)

Poisson sampling (poisson_sampling=True, the default, as the accountant assumes): in fit each
example joins each step's batch independently with probability q = batch_size / N, an epoch
is int(1/q) steps, and the noisy sum is divided by the expected batch size batch_size.
History then gets "epsilon" per epoch (the RDP accountant, at `delta`).
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from kilnet import optimizers as optimizers_mod
from kilnet.callbacks import Callback
from kilnet.privacy.accountant import _check_delta, compute_rdp, get_privacy_spent, DEFAULT_ORDERS
from kilnet.trainers.policy import OneProcess

__all__ = ["DPOptimizer", "DPSGD", "DPAdam", "make_private", "gaussian"]


def _check_clip_noise(l2_norm_clip, noise_multiplier, who):
    for name, v in (("l2_norm_clip", l2_norm_clip), ("noise_multiplier", noise_multiplier)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"{who}: {name} must be a number, got {v!r}")
    c, s = float(l2_norm_clip), float(noise_multiplier)
    if not math.isfinite(c) or c <= 0:
        raise ValueError(f"{who}: l2_norm_clip must be > 0 (the per-example gradient norm bound), got {l2_norm_clip!r}")
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"{who}: noise_multiplier must be >= 0 (noise std / l2_norm_clip), got {noise_multiplier!r}")
    return c, s


class DPOptimizer(optimizers_mod.Optimizer):
    """Wraps an optimizer (SGD, Adam, ...) so that fit / train_on_batch train with DP-SGD.

    l2_norm_clip: C, the bound on each example's gradient norm (all trainable parameters
    together); noise_multiplier: sigma, the noise std is sigma * C; poisson_sampling: fit draws
    Poisson batches (default True); delta: for the epsilon fit writes into History; seed: the
    noise generator's seed (None: kilnet.utils' generator)."""

    def __init__(self, optimizer, l2_norm_clip, noise_multiplier, poisson_sampling=True, delta=1e-5,
                 seed=None, name=None):
        who = type(self).__name__
        self.l2_norm_clip, self.noise_multiplier = _check_clip_noise(l2_norm_clip, noise_multiplier, who)
        inner = optimizers_mod.get(optimizer)
        if isinstance(inner, DPOptimizer):
            raise ValueError(f"{who}: the optimizer is already private")
        self.inner = inner
        self.poisson_sampling = bool(poisson_sampling)
        self.delta = _check_delta(delta)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"{who}: seed must be an int or None, got {seed!r}")
        self.seed = seed
        self._rng = None if seed is None else np.random.default_rng(int(seed))
        self.name = name or f"dp_{inner.name}"
        self.expected_batch_size = None   # set by fit under Poisson sampling
        self.sample_rate = None           # set by fit: batch_size / N
        self._steps = {}                  # (noise_multiplier, sample_rate) -> steps, for epsilon
        self._plans = {}
        self.last_clip_fraction = None    # fraction of the last batch's examples that were clipped

    # the wrapped optimizer's state and hyper-parameters
    clipnorm = property(lambda self: self.inner.clipnorm)
    clipvalue = property(lambda self: self.inner.clipvalue)
    global_clipnorm = property(lambda self: self.inner.global_clipnorm)
    weight_decay = property(lambda self: self.inner.weight_decay)
    slots = property(lambda self: self.inner.slots)
    learning_rate_schedule = property(lambda self: self.inner.learning_rate_schedule)
    keras_slot_groups = property(lambda self: getattr(self.inner, "keras_slot_groups", None) or (
        (("m", "v"),) if type(self.inner).__name__ in ("Adam", "AdamW") else None))

    @property
    def learning_rate(self):
        return self.inner.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self.inner.learning_rate = value

    @property
    def iterations(self):
        return self.inner.iterations

    @iterations.setter
    def iterations(self, value):
        self.inner.iterations = value

    @property
    def state(self):
        return self.inner.state

    @state.setter
    def state(self, value):
        self.inner.state = value

    def build(self, n_params, offsets=None, like=None):
        self.inner.build(n_params, offsets, like)

    def apply(self, grads, trainable_variables=None):
        raise RuntimeError(f"{type(self).__name__}: DP-SGD needs per-example gradients, which a summed gradient "
                           "no longer has; train with fit() or train_on_batch() (the default train_step), "
                           "not optimizer.apply()")

    def get_config(self):
        return {"name": self.name, "optimizer": optimizers_mod.serialize(self.inner),
                "l2_norm_clip": self.l2_norm_clip, "noise_multiplier": self.noise_multiplier,
                "poisson_sampling": self.poisson_sampling, "delta": self.delta, "seed": self.seed,
                # the privacy already spent travels with a saved model: [noise, sample rate, steps]
                "accounted_steps": [[s, q, n] for (s, q), n in self._steps.items()]}

    @classmethod
    def from_config(cls, config):
        cfg = dict(config)
        spent = cfg.pop("accounted_steps", None) or []
        opt = DPOptimizer(**cfg)
        opt._steps = {(float(s), float(q)): int(n) for s, q, n in spent}
        return opt

    # ------------------------------------------------------------------ privacy spent
    def epsilon(self, delta=None):
        """The epsilon (RDP accountant, improved conversion) of the DP steps fit has taken with
        this optimizer, at delta (default: the optimizer's). 0 before any step."""
        delta = self.delta if delta is None else _check_delta(delta)
        if not self._steps:
            return 0.0
        orders = np.asarray(DEFAULT_ORDERS, np.float64)
        cache = self.__dict__.setdefault("_rdp_one", {})   # one step's RDP per (noise, rate): RDP adds up
        rdp = 0.0
        for (s, q), n in self._steps.items():
            one = cache.get((s, q))
            if one is None:
                one = cache[s, q] = compute_rdp(1, s, q, orders)
            with np.errstate(invalid="ignore"):
                rdp = rdp + np.where(np.isinf(one) & (n == 0), 0.0, one * n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return get_privacy_spent(orders, rdp, delta)[0]

    def _count_step(self):
        if self.sample_rate is not None:
            key = (self.noise_multiplier, self.sample_rate)
            self._steps[key] = self._steps.get(key, 0) + 1

    # ------------------------------------------------------------------ the step
    def _noise_rng(self):
        if self._rng is not None:
            return self._rng
        from kilnet.utils import get_rng
        return get_rng()

    def _noise(self, n, xp):
        rng = self._noise_rng()
        buf = self.__dict__.get("_noise_buf")
        if buf is None or buf.size != n:   # kept between steps: no page faults on a fresh array
            buf = self._noise_buf = np.empty(n, np.float32)
        z = gaussian(rng, n, buf)
        return z if xp is np else xp.asarray(z)

    def _finish(self, model, acc_in_grads, batch):
        """model._grads holds the clipped sum: add noise, divide, regularize, update."""
        g = model._grads
        if self.noise_multiplier > 0:
            scale = np.float32(self.noise_multiplier * self.l2_norm_clip)
            if isinstance(g, np.ndarray) and g.dtype == np.float32 and g.flags.c_contiguous:
                add_gaussian(self._noise_rng(), g, scale)   # one pass: g += scale * z
            else:
                z = self._noise(g.size, _xp(g))
                z *= scale
                g += z
        denom = self.expected_batch_size or batch
        g *= np.float32(1.0 / max(denom, 1))
        self._count_step()

    def _private_train_step(self, model, data, loss_out=None):
        """The trainer's step under DP-SGD (trainers/trainer.default_train_step hands it over)."""
        from kilnet import regularizers as regularizers_mod
        from kilnet.trainers.trainer import _plan_step, _step_state
        x, ys, sws = data if len(data) == 3 else (*data, None)
        st = _step_state(model, "train")
        if st.layout is not model._layout_key:
            _plan_step(st, model)
        plan = self._plan(model)
        n = _batch_len(x)
        if n == 0:
            return self._empty_step(model), None
        if plan.fast:
            loss, preds = _fast_clipped_sum(model, st, x, ys, sws, self.l2_norm_clip, self)
        else:
            loss, preds = _loop_clipped_sum(model, x, ys, sws, self.l2_norm_clip, self)
        if loss is None:   # a shared layer this step: the per-example loop instead
            loss, preds = _loop_clipped_sum(model, x, ys, sws, self.l2_norm_clip, self)
        self._finish(model, True, n)
        penalty = regularizers_mod.penalties(st.layers, grads=True) if model.trainable else 0.0
        self.inner.apply(model._params, model._grads)
        return loss + penalty, preds

    def _empty_step(self, model):
        """A Poisson batch with no example: the step still releases noise (the accountant
        counts it) and updates the weights with it."""
        from kilnet import regularizers as regularizers_mod
        model._grads.fill(0.0)
        self._finish(model, True, 0)
        if model.trainable:
            regularizers_mod.penalties(model._flat_layers(), grads=True)
        self.inner.apply(model._params, model._grads)
        return 0.0

    def _plan(self, model):
        key = model._layout_key
        plan = self._plans.get(id(model))
        if plan is None or plan.key is not key:
            plan = self._plans[id(model)] = _Plan(model, key)
        return plan

    # fit's hooks (trainers/trainer.fit asks the optimizer for the process policy)
    def _fit_run(self, n, batch_size, user_callbacks):
        self.sample_rate = min(1.0, batch_size / n)
        self.expected_batch_size = batch_size if self.poisson_sampling else None
        return _DPProcess(n, batch_size, self, user_callbacks)


class DPSGD(DPOptimizer):
    """DP-SGD with Keras SGD's update (learning_rate, momentum, nesterov)."""

    def __init__(self, l2_norm_clip, noise_multiplier, learning_rate=0.01, momentum=0.0, nesterov=False,
                 poisson_sampling=True, delta=1e-5, seed=None, name=None, **kwargs):
        _check_clip_noise(l2_norm_clip, noise_multiplier, "DPSGD")
        super().__init__(optimizers_mod.SGD(learning_rate, momentum=momentum, nesterov=nesterov, **kwargs),
                         l2_norm_clip, noise_multiplier, poisson_sampling, delta, seed, name or "dpsgd")


class DPAdam(DPOptimizer):
    """DP-SGD's gradient with Adam's update."""

    def __init__(self, l2_norm_clip, noise_multiplier, learning_rate=0.001, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-7, poisson_sampling=True, delta=1e-5, seed=None, name=None, **kwargs):
        _check_clip_noise(l2_norm_clip, noise_multiplier, "DPAdam")
        super().__init__(optimizers_mod.Adam(learning_rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, **kwargs),
                         l2_norm_clip, noise_multiplier, poisson_sampling, delta, seed, name or "dpadam")


def make_private(optimizer, l2_norm_clip, noise_multiplier, poisson_sampling=True, delta=1e-5, seed=None):
    """The DP-SGD version of `optimizer` (an Optimizer instance or a Keras name: 'sgd', 'adam', ...)."""
    return DPOptimizer(optimizer, l2_norm_clip, noise_multiplier, poisson_sampling, delta, seed)


# model.save / load_model find the classes by name, as the other optimizers
for _cls in (DPOptimizer, DPSGD, DPAdam):
    optimizers_mod._CLASSES.setdefault(_cls.__name__, _cls)


# ---------------------------------------------------------------------- helpers
def gaussian(rng, n, out=None):
    """n standard normal float32 values: one 64-bit key drawn from the numpy Generator rng, then
    kilnet's Philox4x32-10 + Box-Muller kernel on it (kilnet/random.h: a 52-bit uniform for the
    radius, tails to 8.6 sigma; the same values at any thread count and SIMD level). 216k values
    (the canonical CNN's parameters, every DP step) take ~0.38 ms on one Zen 4 core, where numpy's
    Box-Muller took 0.9 and its ziggurat (rng.standard_normal) 1.8.
    out: a float32 buffer of n values to fill (else a new array)."""
    from kilnet.backend import cpu
    key = int(rng.integers(0, 2 ** 64, dtype=np.uint64))
    z = out if out is not None else np.empty(n, np.float32)
    if z.dtype != np.float32 or z.shape != (n,) or not z.flags.c_contiguous:
        raise ValueError(f"gaussian: out must be a contiguous float32 array of shape ({n},), got {z.dtype} {z.shape}")
    cpu.normal_fill(z, key, 0)
    return z


def add_gaussian(rng, g, scale):
    """g += scale * z, z the n = g.size values gaussian(rng, n) would return (the same key drawn
    from rng, the same stream), in one pass over g; g a contiguous float32 host array."""
    from kilnet.backend import cpu
    key = int(rng.integers(0, 2 ** 64, dtype=np.uint64))
    cpu.normal_fill(g, key, 0, float(scale), True)
    return g


def _xp(a):
    return np if isinstance(a, np.ndarray) else __import__("cupy")


def _batch_len(x):
    from kilnet.engine import node as node_mod
    leaves = node_mod.flatten(x)
    v = leaves[0]
    v = getattr(v, "value", v)
    return int(v.shape[0])


class _Plan:
    """Per model layout: whether the fast path applies (every layer with trainable weights a
    Dense or Conv2D) and the layers that make per-example gradients meaningless (refused)."""

    def __init__(self, model, key):
        from kilnet.layers.conv import Conv2D
        from kilnet.layers.core import Dense
        self.key = key
        self.fast = True
        layers = model._flat_layers()
        # a layer run inside another fused layer's kernels (TimeDistributed(Dense)) is not on the tape
        inner = {id(s) for l in layers if l._is_fused() for s in l._flat_layers() if s is not l}
        for layer in layers:
            kind = type(layer).__name__
            if kind in ("BatchNormalization", "SyncBatchNormalization"):
                raise ValueError(f"DP-SGD: layer {layer.name!r} ({kind}) mixes the examples of a batch, so "
                                 "per-example gradients are not defined; use LayerNormalization instead")
            if layer is model or not layer._own_trainable_variables():
                continue
            if type(layer) not in (Dense, Conv2D) or not layer.trainable or id(layer) in inner:
                self.fast = False


# ---------------------------------------------------------------------- fast path
class _CaptureWalk:
    """The walk object fused layers ask during the DP backward walk: no layer writes weight
    gradients (need_dw False), and each Dense/Conv2D call's state and output gradient are kept."""
    __slots__ = ("wanted", "all_layers", "_cache", "on_layer_done", "written", "cur", "captured")

    def __init__(self):
        self.wanted, self.all_layers, self._cache, self.on_layer_done = None, True, {}, None
        self.written = None
        self.cur = None
        self.captured = []

    def first_write(self, layer):
        return False

    def need_dw(self, layer):
        cur = self.cur
        if cur is not None and cur[0] is layer:
            # called by fused_call's backward with the call's state current
            self.captured.append((layer, layer._local.cur, cur[1]))
            self.cur = None
        return False


def _wrap_group(entry, group, walk, Entry):
    """The fused Conv2D -> Dense entry: its output gradient kept, nothing computed (its input
    needs no gradient: conv_dense.input_fits)."""
    def bw(g, needs):
        if g.dtype != np.float32 or not g.flags.c_contiguous:
            g = np.ascontiguousarray(g, dtype=np.float32)
        walk.captured.append((group, None, g))
        return (None,)
    return Entry(entry.inputs, entry.outputs, bw, entry.layer)


def _wrap(entry, walk, Entry):
    orig = entry.backward

    def bw(g, needs):
        if g.dtype != np.float32 or not g.flags.c_contiguous:
            g = _xp(g).ascontiguousarray(g, dtype=np.float32)
        walk.cur = (entry.layer, g)
        return orig(g, needs)
    return Entry(entry.inputs, entry.outputs, bw, entry.layer)


def _linear_grad(layer, st, g):
    """(dz, act, y) such that the layer's linear-part gradient is act'(y) * dz (act 'linear':
    dz itself), from the output gradient g its backward was handed (and may have changed in
    place). Mirrors ActivatedLayer.call/backward and Conv2D.backward."""
    from kilnet import activations as acts
    from kilnet.layers.conv import Conv2D
    a = layer.activation
    if a in ("softmax", "sigmoid", "linear"):
        return g, "linear", None          # backward_linear got the logits' gradient
    if isinstance(layer, Conv2D) and a in Conv2D._FUSED:
        return g, a, st["y"]              # the conv kernel applies act'(y) itself; g untouched
    if a in acts.KERNEL_ACTIVATIONS:
        return g, "linear", None          # ActivatedLayer.backward turned g into dz in place
    dz = acts.array_rule(a)[1](g, st["z"], st["y"])
    return _xp(g).ascontiguousarray(dz, dtype=np.float32), "linear", None


def _fast_clipped_sum(model, st, x, ys, sws, clip, opt):
    """The clipped per-example gradient sum into model._grads, by the layers' own kernels.
    Returns (loss, preds), or (None, None) when a layer ran twice (the caller falls back). Fused
    groups form only where their per-example pass is one kernel (fusion.allowing's
    per_example; elsewhere the layers run unfused, which was faster than the general per-example
    kernels example by example)."""
    from kilnet.engine import fusion
    from kilnet.engine.state import using_pool
    from kilnet.engine.tape import Entry, walk_into_variables
    from kilnet.engine.tensor import Tensor
    from kilnet.layers import conv_dense
    from kilnet.layers.conv import Conv2D
    tape = st.tape
    tape._entries.clear()
    if type(x) is np.ndarray or hasattr(x, "__cuda_array_interface__"):
        x = Tensor(x)
    with using_pool(st.pool), tape, fusion.allowing(True, per_example=True):
        y_pred = model(x, training=True)
        total, parts, preds = model.compiled.step_loss(y_pred, ys, st.bufs, None, sws)
    model.compiled.last_parts = parts
    n = _batch_len(x)
    walk = _CaptureWalk()
    entries, seen = [], set()
    for e in tape._entries:
        layer = e.layer
        if layer is not None and layer._has_trainable_weights():
            group = conv_dense.group_of(e.backward)
            own = (layer,) if group is None else (group.conv, group.dense)
            if any(id(l) in seen for l in own):
                tape._entries.clear()
                return None, None
            seen.update(id(l) for l in own)
            e = _wrap(e, walk, Entry) if group is None else _wrap_group(e, group, walk, Entry)
        entries.append(e)
    walk_into_variables(entries, total, st.one, {}, walk=walk)
    tape._entries.clear()
    loss = float(total.value)

    grads = model._grads
    grads.fill(0.0)
    xp = _xp(grads)
    sq = xp.zeros(n, np.float64)
    work = []
    for layer, lst, g in walk.captured:
        if lst is None:   # the fused Conv2D -> Dense group (layers/conv_dense.py): one pass, per example
            per, hsq = layer.per_example(g)
            gs = xp.einsum("ij,ij->i", g, g).astype(np.float64)
            sq += xp.einsum("ij,ij->i", per, per).astype(np.float64) + hsq.astype(np.float64) * gs
            if layer.dense.use_bias:
                sq += gs
            work.append((layer, "group", (per, g)))
            continue
        dz, act, y = _linear_grad(layer, lst, g)
        xin = lst["x"]
        if isinstance(layer, Conv2D):
            k_el = layer.kernel.size
            per = xp.zeros((n, k_el + (layer.filters if layer.use_bias else 0)), np.float32)
            kshape = layer.kernel.shape
            batched = getattr(layer._k, "conv2d_backward_per_example", None)   # the CPU's: one call
            if batched is not None:
                batched(dz, xin, layer.kernel, per, layer.strides, layer._pad, layer.dilation_rate, act, y)
            else:
                for i in range(n):   # dW_i by the conv kernel, one example at a time (small: kh*kw*cin*cout)
                    row = per[i]
                    layer._k.conv2d_backward(dz[i:i + 1], xin[i:i + 1], layer.kernel, None,
                                             row[:k_el].reshape(kshape), row[k_el:] if layer.use_bias else None,
                                             layer.strides, layer._pad, layer.dilation_rate, act,
                                             None if y is None else y[i:i + 1])
            sq += xp.einsum("ij,ij->i", per, per).astype(np.float64)
            work.append((layer, "conv", per))
        else:   # Dense: x2 (rows, in), dz (rows, units); rows = n * t
            if act != "linear":   # only Conv2D keeps the activation for its kernel
                raise AssertionError("internal: Dense with an unapplied activation")
            dz2 = dz.reshape(-1, layer.units)
            t = xin.shape[0] // n
            if t == 1:   # ghost norm: nothing per example materialised
                xs = xp.einsum("ij,ij->i", xin, xin).astype(np.float64)   # float32 sums: 5x faster
                gs = xp.einsum("ij,ij->i", dz2, dz2).astype(np.float64)
                sq += xs * gs + (gs if layer.use_bias else 0.0)
            else:
                x3, g3 = xin.reshape(n, t, -1), dz2.reshape(n, t, -1)
                if t * (x3.shape[2] + g3.shape[2]) < x3.shape[2] * g3.shape[2]:
                    gram = xp.matmul(x3, x3.transpose(0, 2, 1)) * xp.matmul(g3, g3.transpose(0, 2, 1))
                    sq += gram.reshape(n, -1).sum(axis=1, dtype=np.float64)
                else:
                    dw = xp.matmul(x3.transpose(0, 2, 1), g3)
                    sq += xp.einsum("nij,nij->n", dw, dw, dtype=np.float64)
                if layer.use_bias:
                    b = g3.sum(axis=1)
                    sq += xp.einsum("ij,ij->i", b, b, dtype=np.float64)
            work.append((layer, "dense", (xin, dz2, t)))
    # The loss is the batch mean: example i's own gradient is n times what the walk gave.
    norms = xp.sqrt(sq) * n
    scale = xp.minimum(1.0, clip / xp.maximum(norms, 1e-30))
    opt.last_clip_fraction = float((norms > clip).mean())
    f = (scale * n).astype(np.float32)
    for layer, kind, w in work:
        if kind in ("conv", "group"):
            per = w if kind == "conv" else w[0]
            conv = layer if kind == "conv" else layer.conv
            k_el = conv.kernel.size
            s = f @ per                      # sum_i f_i dW_i
            conv.dkernel += s[:k_el].reshape(conv.kernel.shape)
            if conv.use_bias:
                conv.dbias += s[k_el:]
            if kind == "group":   # the Dense kernel's clipped sum: h^T diag(f) dz, h computed again
                dz = w[1]
                dz *= f[:, None]   # in place: the walk is done with it
                layer.dense_grads(dz, overwrite=True)   # its view was zeroed with the rest above
        else:
            xin, dz2, t = w
            dz2 *= (f if t == 1 else xp.repeat(f, t))[:, None]   # in place: the walk is done with it
            layer._k.gemm(xin, dz2, layer.dkernel, trans_a=True, beta=1.0)   # x^T diag(s) dz
            if layer.use_bias:
                layer._k.bias_backward(dz2, layer.dbias)
    return loss, preds


# ---------------------------------------------------------------------- fallback: one example at a time
def _loop_clipped_sum(model, x, ys, sws, clip, opt):
    """Any model: each example through the model and the tape on its own (batch of one), its
    flat gradient clipped to `clip`, summed into model._grads."""
    from kilnet.engine import node as node_mod
    from kilnet.trainers.trainer import _step_state, _plan_step
    from kilnet.engine.state import using_pool
    from kilnet.engine.tape import walk_into_variables
    from kilnet.engine.tensor import Tensor
    st = _step_state(model, "dp_one")
    if st.layout is not model._layout_key:
        _plan_step(st, model)
    n = _batch_len(x)
    grads = model._grads
    xp = _xp(grads)
    acc = xp.zeros_like(grads)
    losses, preds_all, clipped = 0.0, None, 0
    tape = st.tape
    for i in range(n):
        xi = node_mod.map_structure(lambda a: (a.value if isinstance(a, Tensor) else a)[i:i + 1], x)
        yi = [None if t is None else t[i:i + 1] for t in ys]
        wi = None if sws is None else [None if w is None else w[i:i + 1] for w in sws]
        grads.fill(0.0)
        tape._entries.clear()
        if type(xi) is np.ndarray or hasattr(xi, "__cuda_array_interface__"):
            xi = Tensor(xi)
        with using_pool(st.pool), tape:
            y_pred = model(xi, training=True)
            total, parts, preds = model.compiled.step_loss(y_pred, yi, st.bufs, None, wi)
        walk_into_variables(tape._entries, total, st.one, st.variables)
        tape._entries.clear()
        losses += float(total.value)
        norm = float(xp.sqrt(xp.dot(grads.astype(np.float64), grads.astype(np.float64))))
        s = min(1.0, clip / norm) if norm > 0 else 1.0
        clipped += norm > clip
        acc += np.float32(s) * grads
        if preds_all is None:
            preds_all = [None if p is None else xp.empty((n,) + p.shape[1:], np.float32) for p in preds]
        for dst, p in zip(preds_all, preds):
            if dst is not None:
                dst[i] = p[0]
    grads[...] = acc
    opt.last_clip_fraction = clipped / n
    model.compiled.last_parts = [None] * len(model.compiled.names)
    return losses / n, preds_all


# ---------------------------------------------------------------------- fit: Poisson batches, epsilon
class _DPProcess(OneProcess):
    """fit's process policy under DP-SGD: Poisson batches (each example in each step's batch
    with probability q, int(1/q) steps per epoch) when the optimizer asks for them, and an
    epsilon per epoch in the logs."""

    def __init__(self, n, batch_size, opt, user_callbacks):
        super().__init__(n, batch_size)
        self.opt = opt
        self.poisson = opt.poisson_sampling
        if self.poisson:
            self.steps = max(1, int(1.0 / opt.sample_rate))
        self.bounds = None
        self.add_epsilon = not any(type(cb).__name__ == "PrivacyAccountant" for cb in (user_callbacks or []))

    def callbacks(self, cbs):
        return list(cbs) + ([_EpsilonLog(self.opt)] if self.add_epsilon else [])

    def order(self, rng, shuffle):
        if not self.poisson:
            return super().order(rng, shuffle)
        # Each example in each step's batch independently with probability q, drawn as the batch
        # size ~ Binomial(n, q), then that many distinct examples uniformly (the same
        # distribution; O(batch) a step where a coin per example was O(n): 35 ms an epoch of
        # 20k examples at batch 32, growing with n^2 / batch)
        q = self.opt.sample_rate
        sizes = rng.binomial(self.n, q, self.steps)
        batches = [np.sort(rng.choice(self.n, int(s), replace=False)) for s in sizes]
        self.bounds = np.concatenate([[0], np.cumsum(sizes)])
        self.max_batch = int(sizes.max()) if len(sizes) else 0
        return np.concatenate(batches) if sizes.sum() else np.zeros(0, np.int64)

    def begin_step(self, step):
        if not self.poisson:
            return super().begin_step(step)
        return int(self.bounds[step]), int(self.bounds[step + 1])

    def empty_step(self, model):
        return self.opt._empty_step(model)

    def finish(self, model):
        # outside fit (train_on_batch): divide by the actual batch, count no steps for epsilon
        self.opt.expected_batch_size = self.opt.sample_rate = None


class _EpsilonLog(Callback):
    def __init__(self, opt):
        super().__init__()
        self.opt = opt

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epsilon"] = self.opt.epsilon()
