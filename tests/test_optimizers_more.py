"""RMSprop, Adagrad, AdamW, weight decay, gradient clipping, learning-rate schedules and L1/L2
regularizers: Keras's formulas (keras/optimizers/*.py, keras/regularizers/regularizers.py).

Kernels: fast == ref == float64 numpy. Optimizers (the Python objects over a flat buffer with
several weights in it): several steps against torch.optim, mapping the conventions:
  - weight decay: Keras 3 decays every optimizer decoupled, p -= p*wd*lr before the step;
    torch.optim.AdamW does exactly that, for the others torch's weight_decay is an L2 term in
    the gradient, so the torch side multiplies p by (1 - lr*wd) itself before step();
  - RMSprop/Adagrad: Keras puts epsilon inside the square root, torch outside; the tests use
    O(1) gradients (and Adagrad's accumulator starts at 0.1) so that epsilon is negligible on
    both sides. Keras's RMSprop momentum buffer is lr * torch's buffer (same trajectory for a
    constant lr);
  - Adam(W): Keras's epsilon is torch's eps*sqrt(1 - beta2^t): torch gets that eps each step;
  - clipnorm (each weight on its own) = torch's clip_grad_norm_ per parameter; global_clipnorm
    = clip_grad_norm_ over all; clipvalue = clip_grad_value_ (torch divides by norm + 1e-6).
Schedules against closed forms and torch's LR schedulers; serialization and save/load."""
import math

import numpy as np
import pytest

from conftest import rand
from kilnet import _cpu, optimizers, regularizers, schedules
from kilnet.layers import Dense, Flatten
from kilnet.models import Sequential, load_model
from kilnet.utils import set_random_seed

MODULES = [pytest.param(_cpu, id="fast"), pytest.param(_cpu.ref, id="ref")]
SIZES = [1, 7, 33, 100003]


def f64(a):
    return np.asarray(a, dtype=np.float64)


# ------------------------------------------------------------------ kernels vs numpy
def np_rmsprop(p, g, v, a, mom, lr, rho, momentum, eps, wd):
    p = p - p * wd * lr
    v = rho * v + (1 - rho) * g * g
    if a is not None:
        a = rho * a + (1 - rho) * g
        den = v - a * a + eps
    else:
        den = v + eps
    inc = lr * g / np.sqrt(den)
    if mom is not None:
        mom = momentum * mom + inc
        return p - mom, v, a, mom
    return p - inc, v, a, mom


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("centered,momentum,wd", [(False, 0.0, 0.0), (True, 0.0, 0.0), (False, 0.9, 0.0),
                                                  (True, 0.5, 0.01)])
def test_rmsprop_kernel(rng, n, centered, momentum, wd):
    lr, rho, eps = 0.01, 0.9, 1e-7
    p0 = rand(rng, n)
    grads = [rand(rng, n, lo=-2, hi=2) for _ in range(4)]
    res = {}
    for K in (_cpu, _cpu.ref):
        p, v = p0.copy(), np.zeros(n, np.float32)
        a = np.zeros(n, np.float32) if centered else None
        mom = np.zeros(n, np.float32) if momentum else None
        for g in grads:
            K.rmsprop_update(p, g, v, a, mom, lr, rho, momentum, eps, wd)
        res[K] = (p, v)
    pn, vn = f64(p0), np.zeros(n)
    an, mn = (np.zeros(n) if centered else None), (np.zeros(n) if momentum else None)
    for g in grads:
        pn, vn, an, mn = np_rmsprop(pn, f64(g), vn, an, mn, lr, rho, momentum, eps, wd)
    np.testing.assert_allclose(res[_cpu][0], res[_cpu.ref][0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(res[_cpu][0], pn, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res[_cpu][1], vn, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_adagrad_and_adamw_kernels(rng, n, wd):
    lr = 0.01
    p0 = rand(rng, n)
    grads = [rand(rng, n, lo=-2, hi=2) for _ in range(4)]
    for K in (_cpu, _cpu.ref):
        p, acc = p0.copy(), np.full(n, 0.1, np.float32)
        q, m, v = p0.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
        for t, g in enumerate(grads, start=1):
            K.adagrad_update(p, g, acc, lr, 1e-7, wd)
            K.adamw_update(q, g, m, v, lr, 0.9, 0.999, 1e-7, wd, t)
        pn, an = f64(p0), np.full(n, 0.1)
        qn, mn, vn = f64(p0), np.zeros(n), np.zeros(n)
        for t, g in enumerate(grads, start=1):
            g = f64(g)
            pn = pn - pn * wd * lr
            an = an + g * g
            pn = pn - lr * g / np.sqrt(an + 1e-7)
            qn = qn - qn * wd * lr
            mn, vn = mn + (g - mn) * 0.1, vn + (g * g - vn) * (1 - float(np.float32(0.999)))
            qn = qn - lr * np.sqrt(1 - float(np.float32(0.999)) ** t) / (1 - float(np.float32(0.9)) ** t) * mn / (np.sqrt(vn) + 1e-7)
        np.testing.assert_allclose(p, pn, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(acc, an, rtol=1e-5)
        np.testing.assert_allclose(q, qn, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("K", MODULES)
def test_adamw_with_zero_decay_is_adam(rng, K):
    p, g = rand(rng, 50), rand(rng, 50)
    a = [p.copy(), g, np.zeros(50, np.float32), np.zeros(50, np.float32)]
    b = [p.copy(), g, np.zeros(50, np.float32), np.zeros(50, np.float32)]
    K.adam_update(*a, 1e-3, 0.9, 0.999, 1e-7, 3)
    K.adamw_update(*b, 1e-3, 0.9, 0.999, 1e-7, 0.0, 3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("K", MODULES)
def test_clip_kernels(rng, K):
    g = rand(rng, 40, lo=-3, hi=3)
    offsets = np.array([0, 10, 10, 25, 40], np.int64)      # an empty segment too
    g[25:40] *= 1e-3                                       # a segment already under the norm
    clipped = g.copy()
    K.clip_by_norm(clipped, offsets, 1.5)
    for lo, hi in zip(offsets[:-1], offsets[1:]):
        seg = f64(g[lo:hi])
        norm = np.linalg.norm(seg)
        expect = seg * 1.5 / max(norm, 1.5) if hi > lo else seg
        np.testing.assert_allclose(clipped[lo:hi], expect, rtol=1e-6, atol=1e-8)
        if hi > lo:
            assert np.linalg.norm(f64(clipped[lo:hi])) <= 1.5 * (1 + 1e-6)
    np.testing.assert_array_equal(clipped[25:40], g[25:40])
    z = np.zeros(5, np.float32)
    K.clip_by_norm(z, np.array([0, 5], np.int64), 1.0)     # zero norm: unchanged, no NaN
    np.testing.assert_array_equal(z, 0)
    nan = np.array([1, np.nan, 2], np.float32)
    K.clip_by_norm(nan, np.array([0, 3], np.int64), 1.0)   # non-finite stays visibly non-finite
    assert np.isnan(nan).all()
    v = g.copy()
    K.clip_by_value(v, 0.5)
    np.testing.assert_array_equal(v, np.clip(g, -0.5, 0.5))


@pytest.mark.parametrize("K", MODULES)
def test_l1l2_penalty_kernel(rng, K):
    w = rand(rng, 1001)
    w[::7] = 0.0
    dw = np.full_like(w, 0.25)
    pen = K.l1l2_penalty(w, dw, 0.01, 0.03)
    # sums in double; the factors are float32 (0.01 -> 0.0099999998), hence 1e-7
    np.testing.assert_allclose(pen, 0.01 * np.abs(f64(w)).sum() + 0.03 * (f64(w) ** 2).sum(), rtol=1e-7)
    np.testing.assert_allclose(dw, 0.25 + 0.01 * np.sign(w) + 2 * 0.03 * w, rtol=1e-6, atol=1e-8)
    assert K.l1l2_penalty(w, None, 0.0, 0.0) == 0.0


@pytest.mark.parametrize("K", MODULES)
def test_new_optimizer_kernels_bad_input(K):
    p, g = np.zeros(6, np.float32), np.ones(6, np.float32)
    s = lambda: np.zeros(6, np.float32)
    with pytest.raises(TypeError, match="float32"):
        K.rmsprop_update(p, g.astype(np.float64), s(), None, None, 0.1)
    with pytest.raises(ValueError, match="velocity"):
        K.rmsprop_update(p, g, np.zeros(5, np.float32), None, None, 0.1)
    with pytest.raises(ValueError, match="momentums"):
        K.rmsprop_update(p, g, s(), None, None, 0.1, momentum=0.9)
    with pytest.raises(ValueError, match="rho"):
        K.rmsprop_update(p, g, s(), None, None, 0.1, rho=1.0)
    with pytest.raises(ValueError, match="overlap"):
        K.rmsprop_update(p, g, p, None, None, 0.1)
    v = s()
    with pytest.raises(ValueError, match="overlap"):
        K.rmsprop_update(p, g, v, v, None, 0.1)
    with pytest.raises(ValueError, match="weight_decay"):
        K.adagrad_update(p, g, s(), 0.1, 1e-7, -1.0)
    with pytest.raises(ValueError, match="overlap"):
        K.adagrad_update(p, g, g, 0.1)
    with pytest.raises(ValueError, match="step"):
        K.adamw_update(p, g, s(), s(), 0.1, step=0)
    with pytest.raises(ValueError, match="beta1"):
        K.adamw_update(p, g, s(), s(), 0.1, beta1=1.5)
    with pytest.raises(ValueError, match="clipnorm"):
        K.clip_by_norm(g.copy(), np.array([0, 6], np.int64), 0.0)
    with pytest.raises(ValueError, match="offsets"):
        K.clip_by_norm(g.copy(), np.array([0, 5], np.int64), 1.0)
    with pytest.raises(ValueError, match="non-decreasing"):
        K.clip_by_norm(g.copy(), np.array([0, 4, 2, 6], np.int64), 1.0)
    with pytest.raises(TypeError, match="int64"):
        K.clip_by_norm(g.copy(), np.array([0, 6], np.int32), 1.0)
    with pytest.raises(ValueError, match="clipvalue"):
        K.clip_by_value(g.copy(), -1.0)
    with pytest.raises(ValueError, match="overlaps"):
        K.l1l2_penalty(g, g, 0.1, 0.1)
    with pytest.raises(ValueError, match="l2"):
        K.l1l2_penalty(g, None, 0.1, -0.1)


# ------------------------------------------------------------------ optimizers vs torch.optim
SHAPES = [(5, 3), (3,), (4, 4)]


def flat_problem(rng, steps):
    params = [rand(rng, *s) for s in SHAPES]
    grads = [[rand(rng, *s, lo=-2, hi=2) for s in SHAPES] for _ in range(steps)]
    sizes = [int(np.prod(s)) for s in SHAPES]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return params, grads, offsets


def run_both(torch, kopt, make_topt, steps=6, clip=None, decoupled_wd=0.0, eps_map=None, rng=None):
    """Apply the same gradients for several steps with kilnet's optimizer (one flat buffer) and
    torch's (one tensor per weight); assert the parameters agree after every step."""
    params, grads, offsets = flat_problem(rng, steps)
    flat = np.concatenate([p.ravel() for p in params])
    kopt.build(flat.size, offsets)
    tp = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    topt = make_topt(tp)
    for t, gs in enumerate(grads, start=1):
        lr = kopt.learning_rate
        kopt.apply(flat, np.concatenate([g.ravel() for g in gs]))
        for p, g in zip(tp, gs):
            p.grad = torch.from_numpy(g.copy())
        if clip == "norm":
            for p in tp:
                torch.nn.utils.clip_grad_norm_([p], kopt.clipnorm)
        elif clip == "global":
            torch.nn.utils.clip_grad_norm_(tp, kopt.global_clipnorm)
        elif clip == "value":
            torch.nn.utils.clip_grad_value_(tp, kopt.clipvalue)
        if decoupled_wd:
            with torch.no_grad():
                for p in tp:
                    p.mul_(1 - lr * decoupled_wd)
        if eps_map:
            topt.param_groups[0]["eps"] = eps_map(t)
        topt.step()
        expect = np.concatenate([p.detach().numpy().ravel() for p in tp])
        np.testing.assert_allclose(flat, expect, rtol=2e-5, atol=2e-6, err_msg=f"step {t}")
    return kopt, topt, tp


@pytest.mark.parametrize("momentum,centered,wd,clip", [(0.0, False, None, None), (0.9, False, None, "norm"),
                                                       (0.0, True, 0.01, None), (0.5, True, None, "global")])
def test_rmsprop_matches_torch(rng, momentum, centered, wd, clip):
    torch = pytest.importorskip("torch", exc_type=ImportError)
    clip_kw = {"norm": {"clipnorm": 1.0}, "global": {"global_clipnorm": 2.0}}.get(clip, {})
    kopt = optimizers.RMSprop(learning_rate=0.01, rho=0.8, momentum=momentum, centered=centered, epsilon=1e-12,
                              weight_decay=wd, **clip_kw)
    run_both(torch, kopt, lambda tp: torch.optim.RMSprop(tp, lr=0.01, alpha=0.8, eps=1e-12, momentum=momentum,
                                                         centered=centered, foreach=False),
             clip=clip, decoupled_wd=wd or 0.0, rng=rng)


@pytest.mark.parametrize("wd,clip", [(None, None), (0.02, "value"), (None, "norm")])
def test_adagrad_matches_torch(rng, wd, clip):
    torch = pytest.importorskip("torch", exc_type=ImportError)
    clip_kw = {"value": {"clipvalue": 0.7}, "norm": {"clipnorm": 0.8}}.get(clip, {})
    kopt = optimizers.Adagrad(learning_rate=0.05, weight_decay=wd, **clip_kw)   # Keras defaults: acc 0.1, eps 1e-7
    run_both(torch, kopt, lambda tp: torch.optim.Adagrad(tp, lr=0.05, initial_accumulator_value=0.1, eps=0.0,
                                                         foreach=False),
             clip=clip, decoupled_wd=wd or 0.0, rng=rng)


@pytest.mark.parametrize("wd,clip", [(0.004, None), (0.1, "global"), (0.05, "norm")])
def test_adamw_matches_torch(rng, wd, clip):
    torch = pytest.importorskip("torch", exc_type=ImportError)
    clip_kw = {"global": {"global_clipnorm": 1.5}, "norm": {"clipnorm": 0.9}}.get(clip, {})
    b2 = 0.99
    kopt = optimizers.AdamW(learning_rate=0.02, weight_decay=wd, beta_2=b2, **clip_kw)
    b2f = float(np.float32(b2))
    run_both(torch, kopt, lambda tp: torch.optim.AdamW(tp, lr=0.02, betas=(0.9, b2), weight_decay=wd, foreach=False),
             clip=clip, eps_map=lambda t: 1e-7 / math.sqrt(1 - b2f ** t), rng=rng)


def test_sgd_weight_decay_matches_torch(rng):
    torch = pytest.importorskip("torch", exc_type=ImportError)
    kopt = optimizers.SGD(learning_rate=0.05, momentum=0.9, nesterov=True, weight_decay=0.1, clipvalue=1.0)
    run_both(torch, kopt, lambda tp: torch.optim.SGD(tp, lr=0.05, momentum=0.9, nesterov=True),
             clip="value", decoupled_wd=0.1, rng=rng)


def test_adam_weight_decay_is_adamw(rng):
    a = optimizers.Adam(learning_rate=0.01, weight_decay=0.05)
    b = optimizers.AdamW(learning_rate=0.01, weight_decay=0.05)
    pa, pb = rand(rng, 100), None
    pb = pa.copy()
    a.build(100)
    b.build(100)
    for _ in range(3):
        g = rand(rng, 100)
        a.apply(pa, g.copy())
        b.apply(pb, g.copy())
    np.testing.assert_array_equal(pa, pb)


def test_optimizer_arguments_and_configs():
    with pytest.raises(ValueError, match="only one of clipnorm"):
        optimizers.Adam(clipnorm=1.0, clipvalue=1.0)
    with pytest.raises(ValueError, match="clipnorm"):
        optimizers.SGD(clipnorm=-1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        optimizers.AdamW(weight_decay=None)
    with pytest.raises(ValueError, match="rho"):
        optimizers.RMSprop(rho=1.0)
    with pytest.raises(ValueError, match="use_ema"):
        optimizers.RMSprop(use_ema=True)
    assert isinstance(optimizers.get("rmsprop"), optimizers.RMSprop)
    assert optimizers.get("adagrad").state == {} and optimizers.get("AdamW").weight_decay == 0.004
    for opt in [optimizers.RMSprop(0.01, rho=0.8, momentum=0.5, centered=True, clipnorm=2.0),
                optimizers.Adagrad(0.1, initial_accumulator_value=0.2, epsilon=1e-6, global_clipnorm=1.0),
                optimizers.AdamW(0.003, weight_decay=0.01, beta_1=0.8, clipvalue=0.5),
                optimizers.SGD(0.1, momentum=0.9, weight_decay=1e-4)]:
        again = optimizers.get(optimizers.serialize(opt))
        assert type(again) is type(opt) and again.get_config() == opt.get_config()
    # what tf.keras writes for RMSprop (legacy keys with their default values are accepted)
    tfk = {"class_name": "RMSprop", "config": {"name": "RMSprop", "learning_rate": 0.001, "decay": 0.0, "rho": 0.9,
                                               "momentum": 0.0, "epsilon": 1e-07, "centered": False,
                                               "jit_compile": False, "is_legacy_optimizer": False}}
    assert optimizers.get(tfk).rho == 0.9
    # Adagrad's accumulator starts at initial_accumulator_value
    ada = optimizers.Adagrad(initial_accumulator_value=0.3)
    ada.build(4)
    np.testing.assert_array_equal(ada.state["accumulator"], np.float32(0.3))


# ------------------------------------------------------------------ schedules
def test_schedule_formulas():
    e = schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    assert e(0) == 0.1 and math.isclose(e(10), 0.05) and math.isclose(e(15), 0.1 * 0.5 ** 1.5)
    es = schedules.ExponentialDecay(0.1, 10, 0.5, staircase=True)
    assert es(9) == 0.1 and math.isclose(es(15), 0.05) and math.isclose(es(20), 0.025)
    c = schedules.CosineDecay(0.2, decay_steps=100, alpha=0.1)
    assert math.isclose(c(0), 0.2) and math.isclose(c(50), 0.2 * (0.9 * 0.5 + 0.1))
    assert math.isclose(c(100), 0.02) and math.isclose(c(1000), 0.02)
    w = schedules.CosineDecay(0.0, decay_steps=10, warmup_target=1.0, warmup_steps=5)
    assert w(0) == 0.0 and math.isclose(w(2), 0.4) and math.isclose(w(5), 1.0)
    assert math.isclose(w(10), 0.5) and math.isclose(w(15), 0.0, abs_tol=1e-12) and math.isclose(w(99), 0.0, abs_tol=1e-12)
    p = schedules.PiecewiseConstantDecay([10, 20], [1.0, 0.5, 0.1])
    assert [p(s) for s in (0, 10, 11, 20, 21, 1000)] == [1.0, 1.0, 0.5, 0.5, 0.1, 0.1]
    for bad in [lambda: schedules.ExponentialDecay(0.1, 0, 0.5), lambda: schedules.CosineDecay(0.1, -1),
                lambda: schedules.PiecewiseConstantDecay([1, 2], [1.0]),
                lambda: schedules.PiecewiseConstantDecay([2, 1], [1.0, 2.0, 3.0]),
                lambda: schedules.CosineDecay(0.1, 10, warmup_target=1.0)]:
        with pytest.raises(ValueError):
            bad()


def test_schedules_match_torch():
    torch = pytest.importorskip("torch", exc_type=ImportError)
    for ks, make in [(schedules.ExponentialDecay(0.1, 7, 0.6),
                      lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.6 ** (1 / 7))),
                     (schedules.CosineDecay(0.1, 30, alpha=0.05),
                      lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=30, eta_min=0.005))]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        sched = make(opt)
        for step in range(31):
            assert math.isclose(ks(step), sched.get_last_lr()[0], rel_tol=1e-9), (type(ks).__name__, step)
            opt.step()
            sched.step()


def test_optimizer_uses_schedule_at_steps_done(rng):
    # Keras: the update k (1-based) uses schedule(k - 1).
    opt = optimizers.SGD(learning_rate=schedules.PiecewiseConstantDecay([2], [0.1, 0.01]))
    opt.build(3)
    p = np.zeros(3, np.float32)
    g = np.ones(3, np.float32)
    moves = []
    for _ in range(5):
        before = p.copy()
        opt.apply(p, g.copy())
        moves.append(float(before[0] - p[0]))
    np.testing.assert_allclose(moves, [0.1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)
    assert opt.learning_rate == 0.01
    with pytest.raises(TypeError, match="schedule"):
        opt.learning_rate = 0.5
    plain = optimizers.Adam()
    plain.learning_rate = 0.5
    assert plain.learning_rate == 0.5


def test_schedule_serialization_and_save_load(tmp_path):
    sched = schedules.CosineDecay(0.01, decay_steps=50, alpha=0.1, warmup_target=0.02, warmup_steps=5)
    opt = optimizers.RMSprop(learning_rate=sched, momentum=0.9, centered=True)
    cfg = opt.get_config()["learning_rate"]
    assert cfg["class_name"] == "CosineDecay" and cfg["module"] == "keras.optimizers.schedules"
    assert cfg["config"]["decay_steps"] == 50 and cfg["config"]["warmup_target"] == 0.02
    again = optimizers.get(optimizers.serialize(opt))
    assert again.get_config() == opt.get_config()
    assert isinstance(again._learning_rate, schedules.CosineDecay)
    # Keras 2 form: no "module"; other schedules round-trip too
    for s in (schedules.ExponentialDecay(0.1, 10, 0.9, staircase=True), schedules.PiecewiseConstantDecay([5], [1.0, 0.1])):
        d = schedules.serialize(s)
        del d["module"]
        assert schedules.get(d).get_config() == s.get_config()
    with pytest.raises(ValueError, match="learning-rate schedule"):
        schedules.get({"class_name": "Lambda", "config": {}})

    # A model trained, saved, loaded and trained on equals one trained straight through: the
    # schedule, the iteration count and the RMSprop state (velocity, momentum, average gradient)
    # all survive the file.
    def model():
        set_random_seed(5)
        m = Sequential([Flatten(input_shape=(3, 2)), Dense(4, activation="tanh"), Dense(2, activation="softmax")])
        m.compile(optimizer=optimizers.RMSprop(learning_rate=sched, momentum=0.9, centered=True),
                  loss="sparse_categorical_crossentropy")
        return m
    x = np.random.default_rng(1).uniform(size=(40, 3, 2)).astype(np.float32)
    y = np.arange(40) % 2
    straight = model()
    straight.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0)
    first = model()
    first.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    first.save(tmp_path / "s.h5")
    resumed = load_model(tmp_path / "s.h5")
    assert resumed.optimizer.iterations == 10 and isinstance(resumed.optimizer._learning_rate, schedules.CosineDecay)
    assert resumed.optimizer.learning_rate == first.optimizer.learning_rate
    resumed.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ regularizers
def test_regularizer_objects():
    assert isinstance(regularizers.get("l2"), regularizers.L2) and regularizers.get("l2").l2 == 0.01
    assert regularizers.get("l1").l1 == 0.01 and regularizers.get("l1_l2").get_config() == {"l1": 0.0, "l2": 0.0}
    assert regularizers.get(None) is None
    tfk = {"class_name": "L1L2", "config": {"l1": 0.0, "l2": 0.009999999776482582}}
    assert math.isclose(regularizers.get(tfk).l2, 0.01, rel_tol=1e-6)
    r = regularizers.L1L2(l1=0.1, l2=0.2)
    assert regularizers.get(regularizers.serialize(r)).get_config() == r.get_config()
    w = np.array([[1.0, -2.0], [0.0, 3.0]], np.float32)
    assert math.isclose(r(w), 0.1 * 6 + 0.2 * 14, rel_tol=1e-7)
    with pytest.raises(ValueError, match="l2"):
        regularizers.L2(-1.0)
    with pytest.raises(ValueError, match="unknown regularizer"):
        regularizers.get("l3")
    d = Dense(3, kernel_regularizer="l2", bias_regularizer=regularizers.L1(0.5))
    cfg = d.get_config()
    assert cfg["kernel_regularizer"]["class_name"] == "L2" and cfg["bias_regularizer"]["config"] == {"l1": 0.5}
    assert Dense.from_config(cfg).get_config() == cfg


def test_regularized_model_matches_torch(rng):
    torch = pytest.importorskip("torch", exc_type=ImportError)
    l1, l2, lb = 0.01, 0.02, 0.05
    m = Sequential([Dense(3, activation="softmax", input_shape=(4,),
                          kernel_regularizer=regularizers.L1L2(l1=l1, l2=l2), bias_regularizer=regularizers.L2(lb))])
    m.compile(optimizer=optimizers.SGD(0.1, clipnorm=0.5), loss="sparse_categorical_crossentropy")
    layer = m.layers[0]
    layer.bias[...] = rand(rng, 3)
    x, y = rand(rng, 8, 4), rng.integers(0, 3, 8)
    w0, b0 = layer.kernel.copy(), layer.bias.copy()
    hist = m.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    W = torch.nn.Parameter(torch.from_numpy(w0.astype(np.float64)))
    b = torch.nn.Parameter(torch.from_numpy(b0.astype(np.float64)))
    ce = torch.nn.functional.cross_entropy(torch.from_numpy(x.astype(np.float64)) @ W + b, torch.from_numpy(y))
    loss = ce + l1 * W.abs().sum() + l2 * (W ** 2).sum() + lb * (b ** 2).sum()
    loss.backward()
    for p in (W, b):   # clipnorm: each weight's gradient on its own
        torch.nn.utils.clip_grad_norm_([p], 0.5)
    assert math.isclose(hist.history["loss"][0], loss.item(), rel_tol=1e-5)
    np.testing.assert_allclose(layer.kernel, (W - 0.1 * W.grad).detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.bias, (b - 0.1 * b.grad).detach().numpy(), rtol=1e-5, atol=1e-6)
    # evaluate reports the penalty too (Keras adds the layers' losses in test_step as well)
    pen = regularizers.L1L2(l1, l2)(layer.kernel) + regularizers.L2(lb)(layer.bias)
    probs = m.predict(x).astype(np.float64)
    ce_now = -np.log(probs[np.arange(8), y]).mean()
    assert math.isclose(m.evaluate(x, y, verbose=0), ce_now + pen, rel_tol=1e-5)
    # a frozen layer's weights are not regularized (Keras: only trainable weights)
    layer.trainable = False
    m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    assert math.isclose(m.evaluate(x, y, verbose=0), ce_now, rel_tol=1e-5)
