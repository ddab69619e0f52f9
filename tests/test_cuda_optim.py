"""kilnet._cuda optimizer updates, clipping and L1/L2 penalties against the CPU reference.

Each update runs a few steps on the GPU and on kilnet._cpu.ref from the same state, on odd sizes
(the float4 loop and its scalar tail) and on misaligned views of a bigger buffer (the scalar
loop); clip_by_norm with many segments of odd lengths (empty ones too) and the offsets as a
numpy array or a list; l1l2_penalty's value, gradient and out= form; argument errors."""
import numpy as np
import pytest

from kilnet import _cpu

pytestmark = pytest.mark.cuda

SIZES = [1, 3, 4, 17, 33, 65, 1000, 100003]


def rand(n, seed, lo=-1.0, hi=1.0):
    return np.random.default_rng(seed).uniform(lo, hi, n).astype(np.float32)


def close(a, b, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def run_update(gpu, name, n, nstate, kwargs_for_step, steps=3, offset=0, seed=0):
    """param, grad and nstate state buffers; the update on ref and GPU for `steps` steps (new
    gradients each step). offset=1 runs on views that start one float in (not 16-byte aligned)."""
    p = rand(n, seed)
    state = [np.abs(rand(n, seed + 10 + i)) * 0.01 for i in range(nstate)]
    pd = gpu.cp.asarray(np.concatenate([np.zeros(offset, np.float32), p]))[offset:]
    sd = [gpu.cp.asarray(np.concatenate([np.zeros(offset, np.float32), s]))[offset:] for s in state]
    for step in range(1, steps + 1):
        g = rand(n, seed + 100 + step)
        gd = gpu.cp.asarray(np.concatenate([np.zeros(offset, np.float32), g]))[offset:]
        kw = kwargs_for_step(step)
        getattr(_cpu.ref, name)(p, g, *state, **kw)
        getattr(gpu.k, name)(pd, gd, *sd, **kw)
    close(gpu.host(pd), p)
    for s, s_ref in zip(sd, state):
        close(gpu.host(s), s_ref)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("offset", [0, 1])
def test_adam_and_adamw(gpu, n, offset):
    run_update(gpu, "adam_update", n, 2,
               lambda t: dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-7, step=t), offset=offset)
    run_update(gpu, "adamw_update", n, 2,
               lambda t: dict(lr=1e-2, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1, step=t),
               offset=offset, seed=1)


@pytest.mark.parametrize("step", [1, 2, 10, 1000])
def test_adam_bias_correction(gpu, step):
    run_update(gpu, "adam_update", 1001, 2,
               lambda t: dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-7, step=step + t - 1), steps=2)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_sgd(gpu, n, momentum, nesterov):
    for offset in (0, 1):
        run_update(gpu, "sgd_update", n, 1,
                   lambda t: dict(lr=0.1, momentum=momentum, nesterov=nesterov), offset=offset)


def test_sgd_without_velocity(gpu):
    p, g = rand(1001, 1), rand(1001, 2)
    pd = gpu.dev(p)
    gpu.k.sgd_update(pd, gpu.dev(g), None, 0.1)
    _cpu.ref.sgd_update(p, g, None, 0.1)
    close(gpu.host(pd), p)


@pytest.mark.parametrize("n", [1, 17, 1000, 100003])
@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_rmsprop(gpu, n, centered, momentum, wd):
    for offset in (0, 1):
        p = rand(n, 3)
        g_list = [rand(n, 30 + s) for s in range(3)]
        bufs = {"v": np.abs(rand(n, 4)) * 0.01, "a": np.zeros(n, np.float32) if centered else None,
                "m": np.zeros(n, np.float32) if momentum else None}

        def dev(a):
            if a is None:
                return None
            return gpu.cp.asarray(np.concatenate([np.zeros(offset, np.float32), a]))[offset:]
        pd = dev(p)
        bd = {k: dev(v) for k, v in bufs.items()}
        for g in g_list:
            kw = dict(lr=1e-2, rho=0.9, momentum=momentum, eps=1e-7, weight_decay=wd)
            _cpu.ref.rmsprop_update(p, g, bufs["v"], bufs["a"], bufs["m"], **kw)
            gpu.k.rmsprop_update(pd, dev(g), bd["v"], bd["a"], bd["m"], **kw)
        close(gpu.host(pd), p)
        for k in bufs:
            if bufs[k] is not None:
                close(gpu.host(bd[k]), bufs[k])


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_adagrad(gpu, n, wd):
    for offset in (0, 1):
        run_update(gpu, "adagrad_update", n, 1, lambda t: dict(lr=0.1, eps=1e-7, weight_decay=wd),
                   offset=offset)


@pytest.mark.parametrize("n", SIZES)
def test_clip_by_value(gpu, n):
    g = rand(n, 5, -3, 3)
    g[: min(n, 2)] = np.nan
    for offset in (0, 1):
        gd = gpu.cp.asarray(np.concatenate([np.zeros(offset, np.float32), g]))[offset:]
        gpu.k.clip_by_value(gd, 0.5)
        r = g.copy()
        _cpu.ref.clip_by_value(r, 0.5)
        np.testing.assert_array_equal(gpu.host(gd), r)   # NaN stays NaN, as on the CPU


@pytest.mark.parametrize("lengths", [[1], [7], [100003], [3, 0, 17, 1000, 0, 1, 65, 300001],
                                     [5] * 200, [0, 0, 4]])
@pytest.mark.parametrize("clipnorm", [0.5, 1e6])
def test_clip_by_norm(gpu, lengths, clipnorm):
    n = sum(lengths)
    g = rand(n, 6, -2, 2)
    off = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    for offsets in (off, off.tolist()):
        gd = gpu.dev(g)
        gpu.k.clip_by_norm(gd, offsets, clipnorm)
        r = g.copy()
        _cpu.ref.clip_by_norm(r, off, clipnorm)
        close(gpu.host(gd), r, rtol=1e-6, atol=1e-7)
        r2 = g.copy()
        _cpu.clip_by_norm(r2, off, clipnorm)
        close(gpu.host(gd), r2, rtol=1e-6, atol=1e-7)


def test_clip_by_norm_nan_segment(gpu):
    g = rand(100, 7)
    g[60] = np.nan
    off = np.array([0, 50, 100], np.int64)
    gd = gpu.dev(g)
    gpu.k.clip_by_norm(gd, off, 0.1)
    r = g.copy()
    _cpu.clip_by_norm(r, off, 0.1)
    np.testing.assert_array_equal(np.isnan(gpu.host(gd)), np.isnan(r))
    close(gpu.host(gd)[:50], r[:50])


@pytest.mark.parametrize("n", [1, 3, 1000, 100003, 1 << 20])
def test_l1l2_penalty(gpu, n):
    w = rand(n, 8)
    w[0] = 0.0
    dw = rand(n, 9)
    for l1, l2 in [(0.01, 0.0), (0.0, 0.02), (0.003, 0.005)]:
        dw_ref = dw.copy()
        v_ref = _cpu.ref.l1l2_penalty(w, dw_ref, l1, l2)
        dwd = gpu.dev(dw)
        v = gpu.k.l1l2_penalty(gpu.dev(w), dwd, l1, l2)
        assert isinstance(v, float)
        assert v == pytest.approx(v_ref, rel=1e-9, abs=1e-12)
        close(gpu.host(dwd), dw_ref)
        out = gpu.cp.full((1,), np.nan, np.float32)
        assert gpu.k.l1l2_penalty(gpu.dev(w), None, l1, l2, out=out) is None
        assert gpu.host(out)[0] == np.float32(v)
        assert gpu.k.l1l2_penalty(gpu.dev(w), None, l1=l1, l2=l2) == v   # deterministic


def test_empty_buffers_are_noops(gpu):
    cp = gpu.cp
    e = lambda: cp.empty(0, np.float32)  # noqa: E731
    gpu.k.adam_update(e(), e(), e(), e(), 1e-3)
    gpu.k.sgd_update(e(), e(), None, 0.1)
    gpu.k.clip_by_value(e(), 1.0)
    assert gpu.k.l1l2_penalty(e(), None, 0.1, 0.1) == 0.0


def test_any_rank(gpu):
    p = rand(2 * 3 * 5, 11).reshape(2, 3, 5)
    g = rand(30, 12).reshape(2, 3, 5)
    m, v = np.zeros_like(p), np.zeros_like(p)
    pd, md, vd = gpu.dev(p), gpu.dev(m), gpu.dev(v)
    gpu.k.adam_update(pd, gpu.dev(g), md, vd, 1e-2)
    _cpu.ref.adam_update(p, g, m, v, 1e-2)
    close(gpu.host(pd), p)


def test_optim_bad_input(gpu):
    k, cp = gpu.k, gpu.cp
    p, g, m, v = (cp.ones(10, np.float32) for _ in range(4))
    with pytest.raises(TypeError, match="CuPy"):
        k.adam_update(np.ones(10, np.float32), g, m, v, 1e-3)
    with pytest.raises(TypeError, match="float32"):
        k.adam_update(p, g.astype(cp.float64), m, v, 1e-3)
    with pytest.raises(ValueError, match="shape"):
        k.adam_update(p, g, m[:5], v, 1e-3)
    with pytest.raises(ValueError, match="contiguous"):
        k.adam_update(p, cp.ones(20, np.float32)[::2], m, v, 1e-3)
    with pytest.raises(ValueError, match="overlaps"):
        k.adam_update(p, g, m, m, 1e-3)
    with pytest.raises(ValueError, match="step"):
        k.adam_update(p, g, m, v, 1e-3, step=0)
    with pytest.raises(ValueError, match="velocity"):
        k.sgd_update(p, g, None, 0.1, momentum=0.9)
    with pytest.raises(ValueError, match="momentums"):
        k.rmsprop_update(p, g, v, None, None, 0.1, momentum=0.9)
    with pytest.raises(ValueError, match="rho"):
        k.rmsprop_update(p, g, v, None, None, 0.1, rho=1.0)
    with pytest.raises(ValueError, match="overlap"):
        k.adagrad_update(p, g, p, 0.1)
    with pytest.raises(ValueError, match="beta1"):
        k.adamw_update(p, g, m, v, 0.1, beta1=1.5)
    with pytest.raises(ValueError, match="clipvalue"):
        k.clip_by_value(g, 0.0)
    with pytest.raises(ValueError, match="offsets"):
        k.clip_by_norm(g, np.array([0, 5], np.int64), 1.0)
    with pytest.raises(ValueError, match="non-decreasing"):
        k.clip_by_norm(g, np.array([0, 6, 4, 10], np.int64), 1.0)
    with pytest.raises(ValueError, match="clipnorm"):
        k.clip_by_norm(g, np.array([0, 10], np.int64), -1.0)
    with pytest.raises(TypeError, match="CuPy"):
        k.clip_by_norm(np.ones(10, np.float32), np.array([0, 10], np.int64), 1.0)
    with pytest.raises(ValueError, match="l2"):
        k.l1l2_penalty(p, None, 0.0, -1.0)
    with pytest.raises(ValueError, match="shape"):
        k.l1l2_penalty(p, None, 0.1, 0.1, out=cp.empty(2, np.float32))
    with pytest.raises(ValueError, match="overlaps"):
        k.l1l2_penalty(p, g, 0.1, 0.1, out=g[:1])
