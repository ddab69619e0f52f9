"""BatchNormalization, Keras semantics: momentum 0.99, epsilon 1e-3, biased batch variance,
moving = moving*momentum + batch*(1 - momentum); training mode uses the batch statistics,
inference mode (and a frozen layer) the moving ones.

Kernels: fast == ref == float64 numpy in both modes, forward and backward, with and without
gamma/beta. Layer: finite differences in both modes, PyTorch parity (BatchNorm2d/1d; torch's
momentum is 1 - Keras's, and torch's running variance uses the unbiased batch variance, which
the test converts), configs (Keras 3 and tf.keras forms), save/load of the moving statistics,
bad input."""
import numpy as np
import pytest

from conftest import assert_grad_close, numeric_grad, rand
from kilnet import _cpu
from kilnet.layers import BatchNormalization, Dense, Flatten
from kilnet.models import Sequential, load_model
from kilnet.utils import set_random_seed

MODULES = [pytest.param(_cpu, id="fast"), pytest.param(_cpu.ref, id="ref")]


def np_bn_forward(x, gamma, beta, mm, mv, momentum, eps, training):
    """float64 Keras formulas; returns y, mean, invstd, new moving mean/var."""
    x2 = x.reshape(-1, x.shape[-1]).astype(np.float64)
    if training:
        mean, var = x2.mean(0), x2.var(0)
        mm, mv = mm * momentum + mean * (1 - momentum), mv * momentum + var * (1 - momentum)
    else:
        mean, var = mm.astype(np.float64), mv.astype(np.float64)
    invstd = 1 / np.sqrt(var + eps)
    y = (gamma if gamma is not None else 1) * (x2 - mean) * invstd + (beta if beta is not None else 0)
    return y.reshape(x.shape), mean, invstd, mm, mv


def np_bn_backward(x, dy, gamma, mean, invstd, batch_stats):
    x2, dy2 = x.reshape(-1, x.shape[-1]).astype(np.float64), dy.reshape(-1, dy.shape[-1]).astype(np.float64)
    xhat = (x2 - mean) * invstd
    g = gamma if gamma is not None else 1
    if batch_stats:
        dx = g * invstd * (dy2 - dy2.mean(0) - xhat * (dy2 * xhat).mean(0))
    else:
        dx = g * invstd * dy2
    return dx.reshape(x.shape), (dy2 * xhat).sum(0), dy2.sum(0)


def run_bn(K, x, gamma, beta, mm, mv, momentum, eps, training, dy):
    c = x.shape[-1]
    mm, mv = mm.copy(), mv.copy()
    mean, invstd, y = np.empty(c, np.float32), np.empty(c, np.float32), np.empty_like(x)
    K.batchnorm_forward(x, gamma, beta, mm, mv, mean, invstd, y, momentum, eps, training)
    dx = np.empty_like(x)
    dg, db = np.full(c, 0.5, np.float32), np.full(c, -0.5, np.float32)   # gradients accumulate
    K.batchnorm_backward(x, dy, gamma, mean, invstd, dx, dg, db, training)
    return y, mean, invstd, mm, mv, dx, dg - 0.5, db + 0.5


# ------------------------------------------------------------------ kernels
@pytest.mark.parametrize("K", MODULES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape,affine", [((4, 5, 3, 7), True), ((33, 1), True), ((2, 3, 17), False),
                                          ((300, 64), True)])
def test_batchnorm_kernels_match_numpy(rng, K, training, shape, affine):
    c = shape[-1]
    x = (rand(rng, *shape) * 3 + rand(rng, c) * 2).astype(np.float32)
    gamma, beta = (rand(rng, c, lo=0.5, hi=1.5), rand(rng, c)) if affine else (None, None)
    mm, mv = rand(rng, c), rand(rng, c, lo=0.5, hi=2)
    dy = rand(rng, *shape)
    y, mean, invstd, mm2, mv2, dx, dg, db = run_bn(K, x, gamma, beta, mm, mv, 0.99, 1e-3, training, dy)
    ye, me, ie, mme, mve = np_bn_forward(x, gamma, beta, mm, mv, 0.99, 1e-3, training)
    np.testing.assert_allclose(y, ye, rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(mean, me, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(invstd, ie, rtol=1e-6)
    np.testing.assert_allclose(mm2, mme, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mv2, mve, rtol=1e-6)
    dxe, dge, dbe = np_bn_backward(x, dy, gamma, mean.astype(np.float64), invstd.astype(np.float64), training)
    np.testing.assert_allclose(dx, dxe, rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(dg, dge, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, dbe, rtol=1e-5, atol=1e-4)
    if not training:   # inference leaves the moving statistics alone
        np.testing.assert_array_equal(mm2, mm)
        np.testing.assert_array_equal(mv2, mv)


def test_batchnorm_large_mean_is_accurate(rng):
    # Mean 1000, spread 0.01: a one-pass float32 variance (E[x^2] - E[x]^2) would be pure rounding
    # noise (~0.1 against a variance of 3e-5). The kernels take the variance around the mean in
    # double, so invstd is right to ~1e-5; y can only be as good as the float32 mean allows
    # (|x - mean| is off by up to ulp(1000)/2 = 3e-5, i.e. 0.005 standard deviations).
    x = (1000 + rand(rng, 4096, 8) * 0.01).astype(np.float32)
    dy = rand(rng, 4096, 8)
    ye, _, ie, _, _ = np_bn_forward(x, None, None, np.zeros(8), np.ones(8), 0.99, 1e-9, True)
    for K in (_cpu, _cpu.ref):
        y, _, invstd, *_ = run_bn(K, x, None, None, np.zeros(8, np.float32), np.ones(8, np.float32), 0.99, 1e-9,
                                  True, dy)
        np.testing.assert_allclose(invstd, ie, rtol=1e-4)
        np.testing.assert_allclose(y, ye, rtol=0, atol=1e-2)


def test_batchnorm_independent_of_threads(rng):
    x, dy = rand(rng, 20000, 32), rand(rng, 20000, 32)
    g, b = rand(rng, 32), rand(rng, 32)
    old = _cpu.get_num_threads()
    try:
        outs = []
        for nt in (1, 2, 4):
            _cpu.set_num_threads(nt)
            outs.append(run_bn(_cpu, x, g, b, np.zeros(32, np.float32), np.ones(32, np.float32), 0.9, 1e-3, True, dy))
        for o in outs[1:]:
            for a, e in zip(outs[0], o):   # per-thread double partial sums: equal to float32 rounding
                np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-6)
    finally:
        _cpu.set_num_threads(old)


# ------------------------------------------------------------------ layer: gradients, modes, torch
def fresh_bn(c, rng, **kwargs):
    layer = BatchNormalization(**kwargs)
    layer._build((None, 3, 4, c))
    if layer.scale:
        layer.gamma[...] = rand(rng, c, lo=0.5, hi=1.5)
    if layer.center:
        layer.beta[...] = rand(rng, c)
    layer.moving_mean[...] = rand(rng, c)
    layer.moving_variance[...] = rand(rng, c, lo=0.5, hi=2)
    return layer


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_layer_gradients(rng, training):
    layer = fresh_bn(5, rng)
    x, dy = rand(rng, 2, 3, 4, 5), rand(rng, 2, 3, 4, 5)
    layer.dgamma[...] = 0
    layer.dbeta[...] = 0
    layer.forward(x, training)
    dx = np.array(layer.backward(dy.copy()))
    f = lambda: float((np.array(layer.forward(x, training)).astype(np.float64) * dy).sum())
    assert_grad_close(dx, numeric_grad(f, x))
    assert_grad_close(layer.dgamma, numeric_grad(f, layer.gamma))
    assert_grad_close(layer.dbeta, numeric_grad(f, layer.beta))


def test_batchnorm_need_dw_false_and_frozen(rng):
    layer = fresh_bn(4, rng)
    x, dy = rand(rng, 2, 3, 4, 4), rand(rng, 2, 3, 4, 4)
    layer.forward(x, True)
    layer.dgamma[...] = 0
    layer.backward(dy, need_dw=False)
    assert not layer.dgamma.any()
    # Keras 3: trainable=False runs in inference mode even when training, and updates nothing.
    layer.trainable = False
    mm, mv = layer.moving_mean.copy(), layer.moving_variance.copy()
    y = np.array(layer.forward(x, True))
    np.testing.assert_array_equal(layer.moving_mean, mm)
    np.testing.assert_array_equal(layer.moving_variance, mv)
    np.testing.assert_allclose(y, layer.forward(x, False), rtol=0, atol=0)


@pytest.mark.parametrize("rank", [2, 4])
def test_batchnorm_matches_torch_both_modes(rng, rank):
    torch = pytest.importorskip("torch", exc_type=ImportError)
    c = 6
    shape = (37, c) if rank == 2 else (3, 5, 7, c)
    layer = BatchNormalization()
    layer._build((None, *shape[1:]))
    layer.gamma[...] = rand(rng, c, lo=0.5, hi=1.5)
    layer.beta[...] = rand(rng, c)
    tbn = (torch.nn.BatchNorm1d if rank == 2 else torch.nn.BatchNorm2d)(c, eps=1e-3, momentum=0.01)
    with torch.no_grad():
        tbn.weight.copy_(torch.from_numpy(layer.gamma))
        tbn.bias.copy_(torch.from_numpy(layer.beta))
    to_t = (lambda a: torch.from_numpy(a.copy())) if rank == 2 else \
        (lambda a: torch.from_numpy(a.transpose(0, 3, 1, 2).copy()))
    from_t = (lambda t: t.detach().numpy()) if rank == 2 else (lambda t: t.detach().numpy().transpose(0, 2, 3, 1))
    m = int(np.prod(shape[:-1]))
    expect_mv, expect_torch_mv = np.ones(c), np.ones(c)
    for step in range(3):   # training mode, three batches: outputs, gradients, moving statistics
        x = (rand(rng, *shape) * 2 + 0.5).astype(np.float32)
        dy = rand(rng, *shape)
        layer.dgamma[...] = 0
        layer.dbeta[...] = 0
        y = np.array(layer.forward(x, True))
        dx = np.array(layer.backward(dy))
        tbn.train()
        xt = to_t(x).requires_grad_()
        yt = tbn(xt)
        yt.backward(to_t(dy))
        np.testing.assert_allclose(y, from_t(yt), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dx, from_t(xt.grad), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(layer.dgamma, tbn.weight.grad.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(layer.dbeta, tbn.bias.grad.numpy(), rtol=1e-5, atol=1e-5)
        tbn.weight.grad = tbn.bias.grad = None
        np.testing.assert_allclose(layer.moving_mean, tbn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
        # torch's running_var takes the unbiased variance var*m/(m-1); Keras the biased one.
        var = x.reshape(-1, c).astype(np.float64).var(0)
        expect_mv = expect_mv * 0.99 + var * 0.01
        np.testing.assert_allclose(layer.moving_variance, expect_mv, rtol=1e-5)
        expect_torch_mv = expect_torch_mv * 0.99 + var * m / (m - 1) * 0.01
        np.testing.assert_allclose(tbn.running_var.numpy(), expect_torch_mv, rtol=1e-5)
    # inference mode with the same moving statistics in both
    with torch.no_grad():
        tbn.running_var.copy_(torch.from_numpy(layer.moving_variance))
    tbn.eval()
    x, dy = rand(rng, *shape), rand(rng, *shape)
    layer.dgamma[...] = 0
    y = np.array(layer.forward(x, False))
    dx = np.array(layer.backward(dy))
    xt = to_t(x).requires_grad_()
    yt = tbn(xt)
    yt.backward(to_t(dy))
    np.testing.assert_allclose(y, from_t(yt), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, from_t(xt.grad), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.dgamma, tbn.weight.grad.numpy(), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ config, weights, save/load
def test_batchnorm_weights_and_config():
    layer = BatchNormalization(name="bn")
    layer._build((None, 4, 4, 3))
    assert [s.attr for s in layer._specs] == ["gamma", "beta", "moving_mean", "moving_variance"]
    assert [s.trainable for s in layer._specs] == [True, True, False, False]
    np.testing.assert_array_equal(layer.gamma, 1)
    np.testing.assert_array_equal(layer.moving_variance, 1)
    assert len(layer.trainable_weights) == 2 and len(layer.non_trainable_weights) == 2
    cfg = layer.get_config()
    assert (cfg["axis"], cfg["momentum"], cfg["epsilon"], cfg["center"], cfg["scale"]) == (-1, 0.99, 1e-3, True, True)
    assert BatchNormalization.from_config(cfg).get_config() == cfg
    no_affine = BatchNormalization(center=False, scale=False)
    no_affine._build((None, 3))
    assert [s.attr for s in no_affine._specs] == ["moving_mean", "moving_variance"]
    # tf.keras writes the axis as a list and adds TF-only keys with their default values
    tfk = BatchNormalization.from_config({**cfg, "axis": [3], "renorm": False, "fused": None,
                                          "renorm_momentum": 0.99, "virtual_batch_size": None})
    tfk._build((None, 4, 4, 3))
    for bad, match in [({"axis": 1}, "last axis"), ({"renorm": True}, "renorm"), ({"synchronized": True}, "synchronized"),
                       ({"gamma_constraint": {"class_name": "NonNeg"}}, "not supported"), ({"momentum": 2}, "momentum"),
                       ({"epsilon": 0}, "epsilon"), ({"axis": [1, 2]}, "one normalization axis")]:
        with pytest.raises(ValueError, match=match):
            BatchNormalization(**bad)._build((None, 4, 4, 3))


def test_batchnorm_model_fit_save_load(tmp_path):
    set_random_seed(3)
    rng = np.random.default_rng(3)
    x = rng.normal(2.0, 3.0, size=(64, 4, 4, 2)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    m = Sequential([BatchNormalization(input_shape=(4, 4, 2)), Flatten(), Dense(3, activation="softmax")])
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    assert m.count_params() == 2 * 4 + 32 * 3 + 3
    m.fit(x, y, batch_size=16, epochs=2, verbose=0)
    bn = m.layers[0]
    assert np.abs(bn.moving_mean - 2.0 * (1 - 0.99 ** 8)).max() < 0.1   # 8 steps of momentum 0.99 towards ~2
    assert not np.allclose(bn.gamma, 1)    # gamma trained
    m.save(tmp_path / "bn.h5")
    m2 = load_model(tmp_path / "bn.h5")
    for a, b in zip(m.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(m.predict(x), m2.predict(x))


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("K", MODULES)
def test_batchnorm_bad_input(K):
    x = np.zeros((8, 3), np.float32)
    v = lambda n=3: np.zeros(n, np.float32)
    args = lambda **kw: {**dict(x=x, gamma=v(), beta=v(), moving_mean=v(), moving_var=np.ones(3, np.float32),
                                mean=v(), invstd=v(), y=np.zeros_like(x)), **kw}
    K.batchnorm_forward(**args())
    with pytest.raises(TypeError, match="float32"):
        K.batchnorm_forward(**args(x=x.astype(np.float64)))
    with pytest.raises(ValueError, match="gamma"):
        K.batchnorm_forward(**args(gamma=v(4)))
    with pytest.raises(ValueError, match="moving_var"):
        K.batchnorm_forward(**args(moving_var=v(2)))
    with pytest.raises(ValueError, match="'y' must have shape"):
        K.batchnorm_forward(**args(y=np.zeros((8, 4), np.float32)))
    with pytest.raises(ValueError, match="overlap"):
        K.batchnorm_forward(**args(y=x))
    mm = v()
    with pytest.raises(ValueError, match="overlap"):
        K.batchnorm_forward(**args(moving_mean=mm, mean=mm))
    with pytest.raises(ValueError, match="eps"):
        K.batchnorm_forward(**args(), eps=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        K.batchnorm_forward(**args(), momentum=1.5)
    with pytest.raises(ValueError, match="empty"):
        K.batchnorm_forward(**args(x=np.zeros((0, 3), np.float32), y=np.zeros((0, 3), np.float32)))
    dy = np.zeros_like(x)
    with pytest.raises(ValueError, match="dy"):
        K.batchnorm_backward(x, dy[:4], None, v(), v(), None, None, None)
    with pytest.raises(ValueError, match="overlap"):
        K.batchnorm_backward(x, dy, None, v(), v(), dy, None, None)
    dg = v()
    with pytest.raises(ValueError, match="overlap"):
        K.batchnorm_backward(x, dy, None, v(), v(), None, dg, dg)
    K.batchnorm_backward(x, x, None, v(), v(), np.zeros_like(x), None, None)   # inputs may share memory
