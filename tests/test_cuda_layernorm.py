"""CUDA layer normalization (kilnet._cuda) against the CPU reference (kilnet._cpu.ref): odd
shapes, gamma/beta or None, rms, dgamma/dbeta accumulating (+=), dx None; dgamma/dbeta from
fixed row-block partials (no atomics): two runs give the same bits. Outputs start as NaN so an
unwritten element fails. Skipped without a GPU."""
import numpy as np
import pytest

from kilnet import _cpu

pytestmark = pytest.mark.cuda

SHAPES = [(1, 1), (3, 7), (2, 1), (5, 33), (3, 4, 768), (1000, 300), (8192, 128), (70, 3000)]


def problem(shape, seed, affine=True):
    r = np.random.default_rng(seed)
    c = shape[-1]
    x = (r.uniform(-3, 3, shape) + r.uniform(-2, 2, shape[:-1] + (1,))).astype(np.float32)
    dy = r.uniform(-1, 1, shape).astype(np.float32)
    g = r.uniform(0.5, 1.5, c).astype(np.float32) if affine else None
    b = r.uniform(-1, 1, c).astype(np.float32) if affine else None
    return x, dy, g, b


def run(K, x, dy, g, b, rms, dev=lambda a: a, empty=np.empty, full=np.full, host=lambda a: a):
    c = x.shape[-1]
    m = x.size // c
    xd, dyd = dev(x), dev(dy)
    mean, inv, y = empty(m), empty(m), empty(x.shape)
    K.layernorm_forward(xd, dev(g), dev(b), mean, inv, y, 1e-3, rms)
    dx = empty(x.shape)
    dg, db = full(c, 0.5), full(c, -0.5)
    K.layernorm_backward(xd, dyd, dev(g), mean, inv, dx, dg, db, rms)
    return [host(a) for a in (y, mean, inv, dx, dg, db)]


def cpu(x, dy, g, b, rms):
    return run(_cpu.ref, x, dy, g, b, rms, empty=lambda s: np.empty(s, np.float32),
               full=lambda n, v: np.full(n, v, np.float32))


def gpu_run(gpu, x, dy, g, b, rms):
    return run(gpu.k, x, dy, g, b, rms, dev=gpu.dev, empty=gpu.poisoned,
               full=lambda n, v: gpu.cp.full(n, v, gpu.cp.float32), host=gpu.host)


@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_layernorm_matches_cpu(gpu, shape, affine, rms):
    x, dy, g, b = problem(shape, 0, affine)
    got, want = gpu_run(gpu, x, dy, g, b, rms), cpu(x, dy, g, b, rms)
    m = x.size // shape[-1]
    red = 1e-5 * max(1.0, np.sqrt(m) / 8)
    for name, a, e, tol in zip(("y", "mean", "invstd", "dx", "dgamma", "dbeta"), got, want,
                               (1e-5, 1e-5, 1e-5, 1e-4, red * 10, red * 10)):
        np.testing.assert_allclose(a, e, rtol=tol, atol=tol, err_msg=name)


def test_layernorm_is_deterministic(gpu):
    x, dy, g, b = problem((4096, 768), 3)
    first = gpu_run(gpu, x, dy, g, b, False)
    for a, e in zip(gpu_run(gpu, x, dy, g, b, False), first):
        np.testing.assert_array_equal(a, e)


def test_layernorm_optional_outputs(gpu):
    x, dy, g, b = problem((37, 19), 5)
    cp, k = gpu.cp, gpu.k
    xd, dyd = gpu.dev(x), gpu.dev(dy)
    mean, inv, y = gpu.poisoned(37), gpu.poisoned(37), gpu.poisoned((37, 19))
    k.layernorm_forward(xd, None, None, mean, inv, y)
    dg = cp.zeros(19, cp.float32)
    k.layernorm_backward(xd, dyd, None, mean, inv, None, dg, None)   # dx and dbeta skipped
    want = cpu(x, dy, None, None, False)
    np.testing.assert_allclose(gpu.host(y), want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gpu.host(dg), want[4], rtol=1e-4, atol=1e-4)


def test_layernorm_bad_input(gpu):
    cp, k = gpu.cp, gpu.k
    x = cp.zeros((4, 3), cp.float32)
    v = lambda n: cp.zeros(n, cp.float32)
    with pytest.raises(TypeError, match="CuPy"):
        k.layernorm_forward(np.zeros((4, 3), np.float32), v(3), v(3), v(4), v(4), cp.zeros_like(x))
    with pytest.raises(ValueError, match="'mean' must have shape"):
        k.layernorm_forward(x, v(3), v(3), v(3), v(4), cp.zeros_like(x))
    with pytest.raises(ValueError, match="overlap"):
        k.layernorm_forward(x, v(3), v(3), v(4), v(4), x)
    with pytest.raises(ValueError, match="eps"):
        k.layernorm_forward(x, v(3), v(3), v(4), v(4), cp.zeros_like(x), eps=-1.0)


def test_layernorm_layer_on_cuda_matches_cpu():
    import kilnet
    from kilnet.layers import Dense, Flatten, LayerNormalization
    from kilnet.models import Sequential
    x = np.random.default_rng(0).normal(size=(64, 5, 6)).astype(np.float32)
    y = np.arange(64) % 3
    models = []
    for dev in ("cpu", "cuda"):
        kilnet.utils.set_random_seed(0)
        m = Sequential([Dense(8, input_shape=(5, 6)), LayerNormalization(axis=[-2, -1]), Flatten(),
                        Dense(3, activation="softmax")])
        m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        m.to(dev)
        m.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
        models.append(m)
    for a, b in zip(models[0].get_weights(), models[1].get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(models[0].predict(x), models[1].predict(x), rtol=1e-4, atol=1e-5)
