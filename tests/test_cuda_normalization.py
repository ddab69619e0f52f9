"""CUDA batch normalization (kilnet._cuda) against the CPU reference (kilnet._cpu.ref), channel
axis last: training (batch statistics, moving averages updated in place) and inference,
gamma/beta present or None, backward with batch_stats on and off, dgamma/dbeta accumulating
(+=), dx None. Outputs start as NaN so an unwritten element fails. The column sums are
deterministic (fixed-order double partials, no atomics): two runs give the same bits."""
import numpy as np
import pytest

from kilnet import _cpu

pytestmark = pytest.mark.cuda

SHAPES = [(1, 1), (3, 7), (33, 1), (4, 5, 3, 7), (2, 3, 17), (129, 33), (2, 9, 9, 65),
          (300, 64), (4099, 3), (64, 28, 28, 32)]


def problem(shape, seed, affine=True):
    r = np.random.default_rng(seed)
    c = shape[-1]
    x = (r.uniform(-3, 3, shape) + r.uniform(-2, 2, c)).astype(np.float32)
    dy = r.uniform(-1, 1, shape).astype(np.float32)
    gamma = r.uniform(0.5, 1.5, c).astype(np.float32) if affine else None
    beta = r.uniform(-1, 1, c).astype(np.float32) if affine else None
    mm = r.uniform(-1, 1, c).astype(np.float32)
    mv = r.uniform(0.5, 2, c).astype(np.float32)
    return x, dy, gamma, beta, mm, mv


def cpu_run(x, dy, gamma, beta, mm, mv, training, batch_stats=None, momentum=0.99, eps=1e-3):
    K = _cpu.ref
    c = x.shape[-1]
    mm, mv = mm.copy(), mv.copy()
    mean, invstd, y = np.empty(c, np.float32), np.empty(c, np.float32), np.empty_like(x)
    K.batchnorm_forward(x, gamma, beta, mm, mv, mean, invstd, y, momentum, eps, training)
    dx = np.empty_like(x)
    dg, db = np.full(c, 0.5, np.float32), np.full(c, -0.5, np.float32)
    K.batchnorm_backward(x, dy, gamma, mean, invstd, dx, dg, db, training if batch_stats is None else batch_stats)
    return dict(y=y, mean=mean, invstd=invstd, mm=mm, mv=mv, dx=dx, dg=dg, db=db)


def gpu_run(gpu, x, dy, gamma, beta, mm, mv, training, batch_stats=None, momentum=0.99, eps=1e-3):
    k, c = gpu.k, x.shape[-1]
    xd, dyd = gpu.dev(x), gpu.dev(dy)
    mmd, mvd = gpu.dev(mm), gpu.dev(mv)
    mean, invstd, y = gpu.poisoned(c), gpu.poisoned(c), gpu.poisoned(x.shape)
    k.batchnorm_forward(xd, gpu.dev(gamma), gpu.dev(beta), mmd, mvd, mean, invstd, y, momentum, eps, training)
    dx = gpu.poisoned(x.shape)
    dg, db = gpu.cp.full(c, 0.5, gpu.cp.float32), gpu.cp.full(c, -0.5, gpu.cp.float32)
    k.batchnorm_backward(xd, dyd, gpu.dev(gamma), mean, invstd, dx, dg, db,
                         training if batch_stats is None else batch_stats)
    return {n: gpu.host(v) for n, v in dict(y=y, mean=mean, invstd=invstd, mm=mmd, mv=mvd, dx=dx, dg=dg, db=db).items()}


def compare(g, c, m):
    """m: rows reduced; the sums' float32 rounding grows with it."""
    red = 1e-5 * max(1.0, np.sqrt(m) / 8)
    np.testing.assert_allclose(g["mean"], c["mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g["invstd"], c["invstd"], rtol=1e-5)
    np.testing.assert_allclose(g["mm"], c["mm"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g["mv"], c["mv"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g["y"], c["y"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g["dx"], c["dx"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g["dg"], c["dg"], rtol=1e-4, atol=red * 10)
    np.testing.assert_allclose(g["db"], c["db"], rtol=1e-4, atol=red * 10)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_batchnorm_matches_cpu(gpu, shape, training):
    x, dy, gamma, beta, mm, mv = problem(shape, len(shape) * 1000 + shape[-1])
    g = gpu_run(gpu, x, dy, gamma, beta, mm, mv, training)
    c = cpu_run(x, dy, gamma, beta, mm, mv, training)
    compare(g, c, x.size // x.shape[-1])
    if not training:   # inference reads the moving statistics and leaves them alone
        np.testing.assert_array_equal(g["mm"], mm)
        np.testing.assert_array_equal(g["mv"], mv)


@pytest.mark.parametrize("shape", [(5, 3), (2, 4, 4, 17)])
@pytest.mark.parametrize("training,batch_stats", [(True, False), (False, True)])
def test_batchnorm_no_affine_and_mixed_modes(gpu, shape, training, batch_stats):
    x, dy, gamma, beta, mm, mv = problem(shape, 7, affine=False)
    g = gpu_run(gpu, x, dy, gamma, beta, mm, mv, training, batch_stats, momentum=0.5, eps=1e-5)
    c = cpu_run(x, dy, gamma, beta, mm, mv, training, batch_stats, momentum=0.5, eps=1e-5)
    compare(g, c, x.size // x.shape[-1])


def test_batchnorm_optional_gradients(gpu):
    x, dy, gamma, beta, mm, mv = problem((37, 9), 3)
    cp, k = gpu.cp, gpu.k
    xd, dyd, gd = gpu.dev(x), gpu.dev(dy), gpu.dev(gamma)
    mean, invstd, y = cp.empty(9, cp.float32), cp.empty(9, cp.float32), cp.empty_like(xd)
    k.batchnorm_forward(xd, gd, gpu.dev(beta), gpu.dev(mm), gpu.dev(mv), mean, invstd, y)
    c = cpu_run(x, dy, gamma, beta, mm, mv, True)
    # dx None: only the parameter gradients
    dg, db = cp.full(9, 0.5, cp.float32), cp.full(9, -0.5, cp.float32)
    k.batchnorm_backward(xd, dyd, gd, mean, invstd, None, dg, db)
    np.testing.assert_allclose(gpu.host(dg), c["dg"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gpu.host(db), c["db"], rtol=1e-4, atol=1e-5)
    # dgamma / dbeta None: dx alone
    dx = gpu.poisoned(x.shape)
    k.batchnorm_backward(xd, dyd, gd, mean, invstd, dx, None, None)
    np.testing.assert_allclose(gpu.host(dx), c["dx"], rtol=1e-4, atol=1e-5)
    # inference-mode dx without any sums
    dx = gpu.poisoned(x.shape)
    k.batchnorm_backward(xd, dyd, gd, mean, invstd, dx, None, None, batch_stats=False)
    np.testing.assert_allclose(gpu.host(dx), gamma * gpu.host(invstd) * dy, rtol=1e-5, atol=1e-6)


def test_batchnorm_is_deterministic(gpu):
    x, dy, gamma, beta, mm, mv = problem((64, 28, 28, 32), 11)
    a = gpu_run(gpu, x, dy, gamma, beta, mm, mv, True)
    b = gpu_run(gpu, x, dy, gamma, beta, mm, mv, True)
    for n in a:
        np.testing.assert_array_equal(a[n], b[n])


def test_batchnorm_large_mean_is_accurate(gpu):
    # mean 1000, spread 0.01: the variance is taken around the mean, in double
    r = np.random.default_rng(2)
    x = (1000 + r.uniform(-1, 1, (4096, 8)) * 0.01).astype(np.float32)
    dy = r.uniform(-1, 1, (4096, 8)).astype(np.float32)
    z, o = np.zeros(8, np.float32), np.ones(8, np.float32)
    g = gpu_run(gpu, x, dy, None, None, z, o, True, eps=1e-9)
    c = cpu_run(x, dy, None, None, z, o, True, eps=1e-9)
    np.testing.assert_allclose(g["invstd"], c["invstd"], rtol=1e-4)
    np.testing.assert_allclose(g["y"], c["y"], rtol=0, atol=1e-2)


def test_batchnorm_on_a_stream(gpu):
    x, dy, gamma, beta, mm, mv = problem((2, 7, 5, 33), 4)
    cp, k = gpu.cp, gpu.k
    xd, dyd, gd, bd, mmd, mvd = (gpu.dev(a) for a in (x, dy, gamma, beta, mm, mv))
    mean, invstd, y, dx = cp.empty(33, cp.float32), cp.empty(33, cp.float32), cp.empty_like(xd), cp.empty_like(xd)
    dg, db = cp.zeros(33, cp.float32), cp.zeros(33, cp.float32)
    cp.cuda.get_current_stream().synchronize()
    s = cp.cuda.Stream(non_blocking=True)
    k.batchnorm_forward(xd, gd, bd, mmd, mvd, mean, invstd, y, stream=s)
    k.batchnorm_backward(xd, dyd, gd, mean, invstd, dx, dg, db, stream=s)
    s.synchronize()
    c = cpu_run(x, dy, gamma, beta, mm, mv, True)
    np.testing.assert_allclose(gpu.host(y), c["y"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gpu.host(dx), c["dx"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gpu.host(db), c["db"] + 0.5, rtol=1e-4, atol=1e-5)


def test_batchnorm_bad_input(gpu):
    cp, k = gpu.cp, gpu.k
    x = cp.zeros((4, 3), cp.float32)
    v = [cp.zeros(3, cp.float32) for _ in range(6)]
    y = cp.zeros((4, 3), cp.float32)
    with pytest.raises(TypeError, match="CuPy"):
        k.batchnorm_forward(np.zeros((4, 3), np.float32), v[0], v[1], v[2], v[3], v[4], v[5], y)
    with pytest.raises(TypeError, match="float32"):
        k.batchnorm_forward(x.astype(cp.float64), v[0], v[1], v[2], v[3], v[4], v[5], y)
    with pytest.raises(ValueError, match="shape"):
        k.batchnorm_forward(x, cp.zeros(4, cp.float32), v[1], v[2], v[3], v[4], v[5], y)
    with pytest.raises(ValueError, match="shape"):
        k.batchnorm_forward(x, v[0], v[1], v[2], v[3], v[4], v[5], cp.zeros((3, 4), cp.float32))
    with pytest.raises(ValueError, match="contiguous"):
        k.batchnorm_forward(cp.zeros((4, 6), cp.float32)[:, ::2], v[0], v[1], v[2], v[3], v[4], v[5], y)
    with pytest.raises(ValueError, match="momentum"):
        k.batchnorm_forward(x, v[0], v[1], v[2], v[3], v[4], v[5], y, momentum=1.5)
    with pytest.raises(ValueError, match="eps"):
        k.batchnorm_forward(x, v[0], v[1], v[2], v[3], v[4], v[5], y, eps=-1.0)
    with pytest.raises(ValueError, match="overlap"):
        k.batchnorm_forward(x, v[0], v[1], v[2], v[3], v[4], v[5], x)
    with pytest.raises(ValueError, match="shape"):
        k.batchnorm_backward(x, cp.zeros((4, 4), cp.float32), v[0], v[1], v[2], y, v[3], v[4])
    with pytest.raises(TypeError, match="CuPy"):
        k.batchnorm_backward(x, x, v[0], v[1], v[2], np.zeros((4, 3), np.float32), v[3], v[4])
