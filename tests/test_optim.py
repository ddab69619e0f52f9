"""Optimizer kernels, Keras formulas (keras/optimizers/sgd.py, adam.py):

  SGD:  v = momentum*v - lr*g;  p += v            nesterov: p += momentum*v - lr*g
        momentum == 0: p -= lr*g (velocity may be None)
  Adam: m += (g - m)(1 - b1);  v += (g^2 - v)(1 - b2)
        p -= lr*sqrt(1 - b2^t)/(1 - b1^t) * m/(sqrt(v) + eps),   t = step counted from 1

Fast kernels vs `_cpu.ref` vs float64 numpy, PyTorch parity, bad input."""
import numpy as np
import pytest

from conftest import rand, avx2_and_avx512
from kilnet import _cpu

MODULES = [pytest.param(_cpu, id="fast"), pytest.param(_cpu.ref, id="ref")]
SIZES = [1, 3, 7, 17, 33, 1000, 100003]
SGD_CONFIGS = [(0.0, False), (0.9, False), (0.9, True), (0.5, True)]   # (momentum, nesterov)


@pytest.fixture
def threads4():
    old = _cpu.get_num_threads()
    _cpu.set_num_threads(4)
    yield
    _cpu.set_num_threads(old)


# ----------------------------------------------------------------------------- numpy formulas
def np_sgd(p, g, v, lr, momentum, nesterov):
    """One Keras SGD step in float64; returns new (p, v)."""
    if momentum == 0.0:
        return p - lr * g, v
    v = momentum * v - lr * g
    return (p + momentum * v - lr * g if nesterov else p + v), v


def np_adam(p, g, m, v, lr, b1, b2, eps, t):
    m = m + (g - m) * (1 - b1)
    v = v + (g * g - v) * (1 - b2)
    alpha = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    return p - alpha * m / (np.sqrt(v) + eps), m, v


def f64(a):
    return np.asarray(a, dtype=np.float64)


def assert_close_per_element(actual, expect, rtol, atol):
    """|actual - expect| <= atol + rtol |expect| with atol an array: m is a running sum of
    gradients of both signs, so its float32 error scales with the gradients, not with m."""
    err = np.abs(f64(actual) - f64(expect))
    bound = np.asarray(atol) + rtol * np.abs(f64(expect))
    bad = np.flatnonzero(err > bound)
    assert bad.size == 0, (f"{bad.size} elements off, e.g. [{bad[0]}]: {actual.flat[bad[0]]!r} vs "
                           f"{expect.flat[bad[0]]!r} (bound {np.broadcast_to(bound, err.shape).flat[bad[0]]:.3g})")


# ------------------------------------------------------- 1. fast == ref == numpy, many sizes
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("momentum,nesterov", SGD_CONFIGS)
def test_sgd_matches_ref_and_numpy(rng, threads4, n, momentum, nesterov):
    lr = 0.05
    p0 = rand(rng, n)
    grads = [rand(rng, n, lo=-2, hi=2) for _ in range(4)]
    states = {}
    for K in (_cpu, _cpu.ref):
        p, v = p0.copy(), np.zeros(n, np.float32)
        for g in grads:
            K.sgd_update(p, g, v if momentum else None, lr, momentum, nesterov)
        states[K] = (p, v)
    pn, vn = f64(p0), np.zeros(n)
    for g in grads:
        pn, vn = np_sgd(pn, f64(g), vn, lr, momentum, nesterov)
    (p, v), (pr, vr) = states[_cpu], states[_cpu.ref]
    np.testing.assert_allclose(p, pr, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(v, vr, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(p, pn, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v, vn, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("K", MODULES)
def test_sgd_without_momentum_leaves_velocity_alone(rng, K):
    p, g = rand(rng, 9), rand(rng, 9)
    v = rand(rng, 9)
    v0, p0 = v.copy(), p.copy()
    K.sgd_update(p, g, v, 0.1, 0.0, True)     # Keras: momentum 0 means plain SGD, nesterov or not
    np.testing.assert_array_equal(v, v0)
    np.testing.assert_allclose(p, f64(p0) - 0.1 * f64(g), rtol=1e-6, atol=1e-7)
    p2 = p0.copy()
    K.sgd_update(p2, g, None, 0.1)
    np.testing.assert_array_equal(p2, p)


@pytest.mark.parametrize("n", SIZES)
def test_adam_matches_ref_and_numpy(rng, threads4, n):
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-7
    p0 = rand(rng, n)
    # a mix of O(1) and tiny gradients, where eps matters
    grads = [(rand(rng, n) * np.where(np.arange(n) % 3 == 0, 1e-5, 1.0)).astype(np.float32)
             for _ in range(5)]
    states = {}
    for K in (_cpu, _cpu.ref):
        p, m, v = p0.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
        for t, g in enumerate(grads, start=1):
            K.adam_update(p, g, m, v, lr, b1, b2, eps, t)
        states[K] = (p, m, v)
    pn, mn, vn = f64(p0), np.zeros(n), np.zeros(n)
    for t, g in enumerate(grads, start=1):
        # the kernel's hyper-parameters are float32
        pn, mn, vn = np_adam(pn, f64(g), mn, vn, *map(float, np.float32([lr, b1, b2, eps])), t)
    for a, b in zip(states[_cpu], states[_cpu.ref]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    p, m, v = states[_cpu]
    gmax = np.max(np.abs(grads), axis=0).astype(np.float64)
    assert_close_per_element(m, mn, 1e-5, 1e-6 * gmax)
    assert_close_per_element(v, vn, 1e-5, 1e-6 * gmax ** 2)
    np.testing.assert_allclose(p, pn, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("K", MODULES)
@pytest.mark.parametrize("step", [1, 2, 10, 1000, 10**6])
def test_adam_bias_correction_at_step(rng, K, step):
    # Arbitrary state at an arbitrary step: the step enters only through the bias correction.
    n = 33
    p, g = rand(rng, n), rand(rng, n)
    m, v = rand(rng, n, lo=-0.1, hi=0.1), rand(rng, n, lo=0.0, hi=0.01)
    pn, mn, vn = np_adam(f64(p), f64(g), f64(m), f64(v), 1e-3, float(np.float32(0.9)),
                         float(np.float32(0.999)), float(np.float32(1e-7)), step)
    K.adam_update(p, g, m, v, 1e-3, 0.9, 0.999, 1e-7, step)
    np.testing.assert_allclose(p, pn, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(m, mn, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(v, vn, rtol=1e-6, atol=1e-10)


def test_adam_defaults_are_keras(rng):
    # Keras Adam defaults: beta_1 0.9, beta_2 0.999, epsilon 1e-7; the step defaults to 1.
    p, g = rand(rng, 5), rand(rng, 5)
    a = [p.copy(), g, np.zeros(5, np.float32), np.zeros(5, np.float32)]
    b = [p.copy(), g, np.zeros(5, np.float32), np.zeros(5, np.float32)]
    _cpu.adam_update(*a, 1e-3)
    _cpu.adam_update(*b, 1e-3, 0.9, 0.999, 1e-7, 1)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    # step 1 from zero state: every parameter moves by lr * g/(|g| + eps/(sqrt(1-b2))) ~ lr sign(g)
    np.testing.assert_allclose(a[0], p - 1e-3 * np.sign(g), rtol=1e-5, atol=1e-7)


def test_optim_results_independent_of_thread_count(rng):
    n = 100003
    p0, g = rand(rng, n), rand(rng, n)
    old = _cpu.get_num_threads()
    try:
        res = []
        for nt in (1, 3, 8):
            _cpu.set_num_threads(nt)
            p, v = p0.copy(), np.zeros(n, np.float32)
            _cpu.sgd_update(p, g, v, 0.1, 0.9, True)
            q, m, s = p0.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
            _cpu.adam_update(q, g, m, s, 1e-3, 0.9, 0.999, 1e-7, 3)
            res.append((p, v, q, m, s))
        for r in res[1:]:
            for a, b in zip(res[0], r):
                np.testing.assert_array_equal(a, b)
    finally:
        _cpu.set_num_threads(old)


# ------------------------------------------------------------------------- 3. PyTorch parity
# torch.optim.SGD keeps buf = momentum*buf + g and does p -= lr*buf (nesterov: p -= lr*(g +
# momentum*buf)); Keras keeps v = momentum*v - lr*g = -lr*buf. For a constant lr the parameter
# trajectories are the same, and the velocities differ by exactly the factor -lr.
@pytest.mark.parametrize("steps", [1, 6])
@pytest.mark.parametrize("momentum,nesterov", SGD_CONFIGS)
def test_sgd_torch(rng, steps, momentum, nesterov):
    torch = pytest.importorskip("torch", exc_type=ImportError)
    n, lr = 257, 0.03
    p0 = rand(rng, n)
    grads = [rand(rng, n, lo=-2, hi=2) for _ in range(steps)]
    pt = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = torch.optim.SGD([pt], lr=lr, momentum=momentum, nesterov=nesterov)
    p, v = p0.copy(), np.zeros(n, np.float32)
    for g in grads:
        pt.grad = torch.from_numpy(g.copy())
        opt.step()
        _cpu.sgd_update(p, g, v if momentum else None, lr, momentum, nesterov)
        np.testing.assert_allclose(p, pt.detach().numpy(), rtol=1e-6, atol=1e-6)
    if momentum:
        buf = opt.state[pt]["momentum_buffer"].numpy()
        np.testing.assert_allclose(v, -lr * buf, rtol=1e-5, atol=1e-7)


# torch.optim.Adam: p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps_torch)
#                     = lr sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps_torch sqrt(1-b2^t)),
# so Keras's eps ("epsilon hat") is eps_torch*sqrt(1-b2^t). "exact": keep Keras eps = 1e-7 and
# give torch eps_t = 1e-7/sqrt(1-b2^t) before each step (torch reads param_groups[0]["eps"] at
# every step); "tiny": eps = 1e-12 on both sides with O(1) gradients, where eps is negligible.
@pytest.mark.parametrize("mode", ["exact", "tiny"])
@pytest.mark.parametrize("b1,b2", [(0.9, 0.999), (0.8, 0.99)])
def test_adam_torch(rng, mode, b1, b2):
    torch = pytest.importorskip("torch", exc_type=ImportError)
    n, lr, steps = 513, 1e-2, 8
    eps = 1e-7 if mode == "exact" else 1e-12
    p0 = rand(rng, n)
    scale = np.where(np.arange(n) % 4 == 0, 1e-6, 1.0) if mode == "exact" else 1.0
    grads = [(rand(rng, n) * scale).astype(np.float32) for _ in range(steps)]
    pt = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = torch.optim.Adam([pt], lr=lr, betas=(b1, b2), eps=eps, foreach=False)
    p, m, v = p0.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
    b2f = float(np.float32(b2))
    for t, g in enumerate(grads, start=1):
        if mode == "exact":
            opt.param_groups[0]["eps"] = eps / np.sqrt(1 - b2f ** t)
        pt.grad = torch.from_numpy(g.copy())
        opt.step()
        _cpu.adam_update(p, g, m, v, lr, b1, b2, eps, t)
        np.testing.assert_allclose(p, pt.detach().numpy(), rtol=1e-5, atol=2e-6)
    st = opt.state[pt]
    gmax = np.max(np.abs(grads), axis=0).astype(np.float64)
    assert_close_per_element(m, st["exp_avg"].numpy(), 1e-5, 1e-6 * gmax)
    assert_close_per_element(v, st["exp_avg_sq"].numpy(), 1e-5, 1e-6 * gmax ** 2)


# ------------------------------------------------------------------------------ 5. bad input
@pytest.mark.parametrize("K", MODULES)
def test_sgd_bad_input(K):
    p, g, v = np.zeros(6, np.float32), np.ones(6, np.float32), np.zeros(6, np.float32)
    for bad in [p.astype(np.float64), p.astype(np.int32), p.tolist(), 0.0, None]:
        with pytest.raises(TypeError):
            K.sgd_update(bad, g, v, 0.1, 0.9)
        with pytest.raises(TypeError):
            K.sgd_update(p, bad, v, 0.1, 0.9)
    for bad in [v.astype(np.float64), v.tolist()]:
        with pytest.raises(TypeError):
            K.sgd_update(p, g, bad, 0.1, 0.9)
    with pytest.raises(TypeError):
        K.sgd_update(p, g, v, "0.1", 0.9)
    with pytest.raises(ValueError, match="shape"):
        K.sgd_update(p, np.ones(5, np.float32), v, 0.1, 0.9)
    with pytest.raises(ValueError, match="shape"):
        K.sgd_update(p, g, np.zeros(7, np.float32), 0.1, 0.9)
    with pytest.raises(ValueError, match="shape"):
        K.sgd_update(p, g.reshape(2, 3), v, 0.1, 0.9)
    nc = np.zeros(12, np.float32)[::2]
    for args in [(nc, g, v), (p, nc, v), (p, g, nc)]:
        with pytest.raises(ValueError, match="contiguous"):
            K.sgd_update(*args, 0.1, 0.9)
    with pytest.raises(ValueError, match="velocity"):
        K.sgd_update(p, g, None, 0.1, 0.9)
    with pytest.raises(ValueError, match="velocity"):
        K.sgd_update(p, g, None, 0.1, 0.9, True)
    with pytest.raises(ValueError, match="overlap"):
        K.sgd_update(p, p, v, 0.1, 0.9)
    with pytest.raises(ValueError, match="overlap"):
        K.sgd_update(p, g, p, 0.1, 0.9)
    with pytest.raises(ValueError, match="overlap"):
        K.sgd_update(p, g, g, 0.1, 0.9)
    buf = np.zeros(7, np.float32)
    with pytest.raises(ValueError, match="overlap"):
        K.sgd_update(buf[:6], buf[1:], v, 0.1, 0.9)
    ro = p.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        K.sgd_update(ro, g, v, 0.1, 0.9)
    with pytest.raises(ValueError, match="read-only"):
        K.sgd_update(p, g, ro, 0.1, 0.9)
    np.testing.assert_array_equal(p, 0.0)   # nothing was updated by a refused call


@pytest.mark.parametrize("K", MODULES)
def test_adam_bad_input(K):
    def arrays():
        return [np.zeros(6, np.float32), np.ones(6, np.float32), np.zeros(6, np.float32),
                np.zeros(6, np.float32)]
    for i in range(4):
        for bad in [np.zeros(6), np.zeros(6, np.float16), [0.0] * 6, None]:
            a = arrays()
            a[i] = bad
            with pytest.raises(TypeError):
                K.adam_update(*a, 1e-3)
        a = arrays()
        a[i] = np.zeros(5, np.float32)
        with pytest.raises(ValueError, match="shape"):
            K.adam_update(*a, 1e-3)
        a = arrays()
        a[i] = np.zeros(12, np.float32)[::2]
        with pytest.raises(ValueError, match="contiguous"):
            K.adam_update(*a, 1e-3)
    # every pair of arguments sharing memory
    for i in range(4):
        for j in range(4):
            if i != j:
                a = arrays()
                a[j] = a[i]
                with pytest.raises(ValueError, match="overlap"):
                    K.adam_update(*a, 1e-3)
    p, g, m, v = arrays()
    for step in [0, -1, -(2**40)]:
        with pytest.raises(ValueError, match="step"):
            K.adam_update(p, g, m, v, 1e-3, step=step)
    with pytest.raises(TypeError):
        K.adam_update(p, g, m, v, 1e-3, step=1.5)
    with pytest.raises(TypeError):
        K.adam_update(p, g, m, v, None)
    for i in (0, 2, 3):
        a = arrays()
        a[i].flags.writeable = False
        with pytest.raises(ValueError, match="read-only"):
            K.adam_update(*a, 1e-3)
    np.testing.assert_array_equal(p, 0.0)
    np.testing.assert_array_equal(m, 0.0)


@pytest.mark.parametrize("K", MODULES)
def test_optim_empty_buffer_is_a_noop(K):
    # A model without trainable weights hands the optimizer an empty flat buffer: nothing to
    # update, so this is accepted (unlike the losses, where an empty batch has no mean).
    e = np.zeros(0, np.float32)
    K.sgd_update(e, e.copy(), e.copy(), 0.1, 0.9, True)
    K.sgd_update(e, e.copy(), None, 0.1)
    K.adam_update(e, e.copy(), e.copy(), e.copy(), 1e-3, step=1)


@pytest.mark.parametrize("K", MODULES)
def test_optim_any_rank(rng, K):
    p = rand(rng, 3, 4, 5)
    g = rand(rng, 3, 4, 5)
    q = p.reshape(-1).copy()
    K.sgd_update(p, g, np.zeros_like(p), 0.1, 0.9, False)
    K.sgd_update(q, g.reshape(-1), np.zeros_like(q), 0.1, 0.9, False)
    np.testing.assert_array_equal(p.reshape(-1), q)


def test_avx2_level_matches_avx512_level_bit_for_bit():
    """The AVX-512 updates (optim_avx512.cpp) do the portable loops' operations in the same
    order without FMA: every optimizer variant gives the same bits at both levels, on sizes with
    vector tails, over a few steps."""
    body = """
for n in (1, 7, 15, 16, 17, 33, 1000, 100003):
    r = np.random.default_rng(n)
    p, g, m, a = (r.standard_normal(n).astype(np.float32) for _ in range(4))
    v = np.abs(r.standard_normal(n)).astype(np.float32)
    cases = {
        "sgd": lambda S: _cpu.sgd_update(S[0], g, None, 0.01),
        "momentum": lambda S: _cpu.sgd_update(S[0], g, S[1], 0.01, 0.9, False),
        "nesterov": lambda S: _cpu.sgd_update(S[0], g, S[1], 0.01, 0.9, True),
        "adam": lambda S: _cpu.adam_update(S[0], g, S[1], S[2], 1e-3, 0.9, 0.999, 1e-7, 3),
        "adamw": lambda S: _cpu.adamw_update(S[0], g, S[1], S[2], 1e-3, 0.9, 0.999, 1e-7, 0.004, 3),
        "rmsprop": lambda S: _cpu.rmsprop_update(S[0], g, S[2], None, None, 1e-3, 0.9, 0.0, 1e-7, 0.01),
        "rmsprop_centered_momentum": lambda S: _cpu.rmsprop_update(S[0], g, S[2], S[3], S[1], 1e-3, 0.9, 0.9,
                                                                  1e-7, 0.0),
        "rmsprop_momentum": lambda S: _cpu.rmsprop_update(S[0], g, S[2], None, S[1], 1e-3, 0.9, 0.9, 1e-7, 0.0),
        "adagrad": lambda S: _cpu.adagrad_update(S[0], g, S[2], 1e-2, 1e-7, 0.01),
    }
    for name, f in cases.items():
        S = [p.copy(), m.copy(), v.copy(), 0.1 * a]
        for _ in range(3):
            f(S)
        out[f"{name}_{n}"] = np.concatenate(S)
"""
    lo, hi = avx2_and_avx512(body)
    for k in hi:
        np.testing.assert_array_equal(lo[k].view(np.uint32), hi[k].view(np.uint32), err_msg=k)
