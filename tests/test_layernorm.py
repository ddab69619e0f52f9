"""LayerNormalization, Keras 3 semantics: each sample normalized over the last axis (or a list
of trailing axes), y = gamma*(x - mean)/sqrt(var + epsilon) + beta with the biased variance;
rms_scaling=True is Keras's y = gamma*x/sqrt(var + epsilon).

Kernels: fast == ref == float64 numpy == torch (F.layer_norm) forward and backward on odd
shapes, with and without gamma/beta, rms; rows with a large mean; the same bits at 1..4
threads (dgamma/dbeta from fixed row blocks). Layer: finite differences in float64 (last axis,
two trailing axes, rms), Keras 3 parity of outputs given the same weights and of configs,
weights order, fit and .h5 round trip, bad arguments."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import views_at, assert_grad_close, numeric_grad, rand, avx2_and_avx512
from kilnet import _cpu
from kilnet.layers import Dense, Flatten, LayerNormalization
from kilnet.models import Sequential, load_model
from kilnet.utils import set_random_seed

MODULES = [pytest.param(_cpu, id="fast"), pytest.param(_cpu.ref, id="ref")]


def np_ln(x, gamma, beta, eps, rms, dy):
    """float64 Keras formulas over the last axis: y, mean, invstd, dx, dgamma, dbeta."""
    x = x.astype(np.float64)
    dy = dy.astype(np.float64)
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    inv = 1 / np.sqrt(var + eps)
    g = gamma.astype(np.float64) if gamma is not None else 1.0
    b = beta.astype(np.float64) if (beta is not None and not rms) else 0.0
    z = (x if rms else x - mean) * inv
    y = g * z + b
    xhat = (x - mean) * inv
    gd = dy * g
    a = 0.0 if rms else gd.mean(-1, keepdims=True)
    dx = inv * (gd - a - xhat * (gd * z).mean(-1, keepdims=True))
    rows = lambda v: v.reshape(-1, x.shape[-1])
    return y, mean[..., 0], inv[..., 0], dx, rows(dy * z).sum(0), rows(dy).sum(0)


def run_ln(K, x, gamma, beta, eps, rms, dy, dx=True):
    c = x.shape[-1]
    m = x.size // c
    mean, inv, y = np.empty(m, np.float32), np.empty(m, np.float32), np.empty_like(x)
    K.layernorm_forward(x, gamma, beta, mean, inv, y, eps, rms)
    dxa = np.empty_like(x) if dx else None
    dg, db = np.full(c, 0.5, np.float32), np.full(c, -0.5, np.float32)   # gradients accumulate
    K.layernorm_backward(x, dy, gamma, mean, inv, dxa, dg, db, rms)
    return y, mean, inv, dxa, dg - 0.5, db + 0.5


# ------------------------------------------------------------------ kernels
@pytest.mark.parametrize("K", MODULES)
@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("shape,affine", [((1000, 300), True), ((3, 5, 7), True), ((2, 1), True), ((17, 8), False),
                                          ((5, 33), True), ((4, 768), True), ((9, 13), False), ((70, 3), True)])
def test_layernorm_kernels_match_numpy(rng, K, rms, shape, affine):
    c = shape[-1]
    x = (rand(rng, *shape) * 3 + rand(rng, *shape[:-1], 1) * 2).astype(np.float32)
    gamma, beta = (rand(rng, c, lo=0.5, hi=1.5), rand(rng, c)) if affine else (None, None)
    dy = rand(rng, *shape)
    y, mean, inv, dx, dg, db = run_ln(K, x, gamma, beta, 1e-3, rms, dy)
    ye, me, ie, dxe, dge, dbe = np_ln(x, gamma, beta, 1e-3, rms, dy)
    np.testing.assert_allclose(y, ye, rtol=1e-5, atol=3e-6)
    np.testing.assert_allclose(mean, me.reshape(-1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(inv, ie.reshape(-1), rtol=2e-6)
    np.testing.assert_allclose(dx, dxe, rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(dg, dge, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, dbe, rtol=1e-5, atol=1e-4)
    _, _, _, none, dg2, db2 = run_ln(K, x, gamma, beta, 1e-3, rms, dy, dx=False)   # dx skipped
    assert none is None
    np.testing.assert_array_equal(dg2, dg)


def test_layernorm_large_mean_is_accurate(rng):
    x = (1000.0 + rand(rng, 64, 200) * 0.01).astype(np.float32)
    dy = rand(rng, 64, 200)
    y, mean, inv, dx, _, _ = run_ln(_cpu, x, None, None, 1e-8, False, dy)
    ye, me, ie, dxe, _, _ = np_ln(x, None, None, 1e-8, False, dy)
    np.testing.assert_allclose(inv, ie.reshape(-1), rtol=1e-3)
    # the mean is kept as a float32 (ulp 6e-5 at 1000, 1% of the rows' std of 0.006): y within that
    np.testing.assert_allclose(y, ye, rtol=0, atol=1e-2)
    np.testing.assert_allclose(mean, me.reshape(-1), rtol=0, atol=6.2e-5)


def test_layernorm_same_bits_at_any_thread_count(rng):
    x, dy = rand(rng, 5000, 96), rand(rng, 5000, 96)
    g, b = rand(rng, 96), rand(rng, 96)
    old = _cpu.get_num_threads()
    try:
        outs = []
        for nt in (1, 2, 3, 4):
            _cpu.set_num_threads(nt)
            outs.append(run_ln(_cpu, x, g, b, 1e-3, False, dy))
    finally:
        _cpu.set_num_threads(old)
    for o in outs[1:]:
        for a, e in zip(outs[0], o):
            np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("nt", [1, 3])
@pytest.mark.parametrize("offsets", [(64, 64, 80), (64, 208, 64), (0, 0, 512), (128, 64, 192)])
def test_layernorm_output_just_ahead_of_an_input_same_bits(rng, nt, offsets):
    """y (dx) 16-512 bytes after x (or dy) modulo 2 MiB goes through the staging rows
    (store_ahead.h): the same bits as any other layout, at any thread count."""
    shape = (301, 96)
    x0, dy0 = rand(rng, *shape), rand(rng, *shape)
    g, b = rand(rng, 96), rand(rng, 96)

    def run(x, dy, out):   # forward into out, then backward into out
        mean, invstd = np.empty(301, np.float32), np.empty(301, np.float32)
        _cpu.layernorm_forward(x, g, b, mean, invstd, out)
        y = out.copy()
        dg, db = np.zeros(96, np.float32), np.zeros(96, np.float32)
        _cpu.layernorm_backward(x, dy, g, mean, invstd, out, dg, db)
        return y, out.copy(), dg, db
    old = _cpu.get_num_threads()
    try:
        _cpu.set_num_threads(nt)
        want = run(x0, dy0, np.empty_like(x0))
        x, dy, out = views_at(shape, offsets)
        x[...], dy[...] = x0, dy0
        got = run(x, dy, out)
    finally:
        _cpu.set_num_threads(old)
    for a, e in zip(got, want):
        np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize("shape", [(37, 300), (64, 128), (3, 4, 768)])
def test_layernorm_kernels_match_torch(rng, shape):
    torch = pytest.importorskip("torch", exc_type=ImportError)
    c = shape[-1]
    x, dy = rand(rng, *shape) * 2 + 0.5, rand(rng, *shape)
    g, b = rand(rng, c, lo=0.5, hi=1.5), rand(rng, c)
    xt = torch.from_numpy(x.copy()).requires_grad_()
    gt, bt = torch.from_numpy(g.copy()).requires_grad_(), torch.from_numpy(b.copy()).requires_grad_()
    yt = torch.nn.functional.layer_norm(xt, (c,), gt, bt, 1e-3)
    yt.backward(torch.from_numpy(dy))
    y, _, _, dx, dg, db = run_ln(_cpu, x, g, b, 1e-3, False, dy)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dg, gt.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, bt.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("K", MODULES)
def test_layernorm_bad_input(K):
    x = np.zeros((8, 3), np.float32)
    v = lambda n: np.zeros(n, np.float32)
    args = lambda **kw: {**dict(x=x, gamma=v(3), beta=v(3), mean=v(8), invstd=v(8), y=np.zeros_like(x)), **kw}
    K.layernorm_forward(**args())
    with pytest.raises(TypeError, match="float32"):
        K.layernorm_forward(**args(x=x.astype(np.float64)))
    with pytest.raises(ValueError, match="gamma"):
        K.layernorm_forward(**args(gamma=v(4)))
    with pytest.raises(ValueError, match="'mean' must have shape"):
        K.layernorm_forward(**args(mean=v(3)))
    with pytest.raises(ValueError, match="'y' must have shape"):
        K.layernorm_forward(**args(y=np.zeros((8, 4), np.float32)))
    with pytest.raises(ValueError, match="overlap"):
        K.layernorm_forward(**args(y=x))
    mean = v(8)
    with pytest.raises(ValueError, match="overlap"):
        K.layernorm_forward(**args(mean=mean, invstd=mean))
    with pytest.raises(ValueError, match="eps"):
        K.layernorm_forward(**args(), eps=float("nan"))
    with pytest.raises(ValueError, match="empty"):
        K.layernorm_forward(**args(x=np.zeros((0, 3), np.float32), y=np.zeros((0, 3), np.float32), mean=v(0), invstd=v(0)))
    dy = np.zeros_like(x)
    with pytest.raises(ValueError, match="dy"):
        K.layernorm_backward(x, dy[:4], None, v(8), v(8), None, None, None)
    with pytest.raises(ValueError, match="overlap"):
        K.layernorm_backward(x, dy, None, v(8), v(8), dy, None, None)
    dg = v(3)
    with pytest.raises(ValueError, match="overlap"):
        K.layernorm_backward(x, dy, None, v(8), v(8), None, dg, dg)
    with pytest.raises(ValueError, match="'invstd' must have shape"):
        K.layernorm_backward(x, dy, None, v(8), v(3), None, None, None)
    K.layernorm_backward(x, x, None, v(8), v(8), np.zeros_like(x), None, None)   # inputs may share memory


@pytest.mark.parametrize("nt", [1, 3])
@pytest.mark.parametrize("rms,affine", [(False, True), (False, False), (True, True)])
@pytest.mark.parametrize("K", [_cpu, _cpu.ref], ids=["cpu", "ref"])
def test_layernorm_bfloat16_input_and_output(rng, K, nt, rms, affine):
    """bfloat16 x and y (mixed precision): the float32 kernels on the widened rows, y rounded
    once — the same bits as float32 on x's values then rounding; the backward reads bfloat16 x
    and gives the float32 kernel's dx, dgamma, dbeta bit for bit."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = ml_dtypes.bfloat16
    M, C = 301, 77
    x16 = (rand(rng, M, C) * 3 + 0.5).astype(bf16)
    x = x16.astype(np.float32)
    g, b = (rand(rng, C, lo=0.5, hi=1.5), rand(rng, C)) if affine else (None, None)
    dy = rand(rng, M, C)
    old = _cpu.get_num_threads()
    try:
        _cpu.set_num_threads(nt)
        y, mean, inv = np.empty_like(x), np.empty(M, np.float32), np.empty(M, np.float32)
        K.layernorm_forward(x, g, b, mean, inv, y, 1e-3, rms)
        y16, mean16, inv16 = np.empty((M, C), bf16), np.empty(M, np.float32), np.empty(M, np.float32)
        K.layernorm_forward(x16, g, b, mean16, inv16, y16, 1e-3, rms)
        np.testing.assert_array_equal(y16.view(np.uint16), y.astype(bf16).view(np.uint16))
        np.testing.assert_array_equal(mean16, mean)
        np.testing.assert_array_equal(inv16, inv)
        outs = []
        for xin in (x, x16):
            dx = np.empty_like(x)
            dg, db = (np.zeros(C, np.float32), np.zeros(C, np.float32)) if affine else (None, None)
            K.layernorm_backward(xin, dy, g, mean, inv, dx, dg, db, rms)
            outs.append((dx, dg, db))
        for a, c in zip(*outs):
            if a is not None:
                np.testing.assert_array_equal(a, c)
    finally:
        _cpu.set_num_threads(old)


def test_layernorm_bfloat16_bad_input():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x16 = np.zeros((8, 3), ml_dtypes.bfloat16)
    v = lambda n: np.zeros(n, np.float32)
    with pytest.raises(TypeError, match="x and y must both be float32 or both bfloat16"):
        _cpu.layernorm_forward(x16, v(3), v(3), v(8), v(8), np.zeros((8, 3), np.float32))
    with pytest.raises(TypeError, match="'gamma' must be float32 \\(only x and y may be bfloat16\\)"):
        _cpu.layernorm_forward(x16, v(3).astype(ml_dtypes.bfloat16), v(3), v(8), v(8), np.zeros_like(x16))
    with pytest.raises(TypeError, match="'dy' must be float32 \\(only x may be bfloat16\\)"):
        _cpu.layernorm_backward(x16, x16, None, v(8), v(8), None, v(3), None)
    with pytest.raises(ValueError, match="'y' must have shape"):
        _cpu.layernorm_forward(x16, None, None, v(8), v(8), np.zeros((8, 4), ml_dtypes.bfloat16))


def test_layernorm_layer_under_mixed_bfloat16(rng):
    """The layer reads and writes bfloat16 under mixed_bfloat16: the output is the float32
    normalization of the input's values rounded once; the input gradient stays float32."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from kilnet import GradientTape, Tensor, ops
    ln = LayerNormalization(dtype="mixed_bfloat16")
    assert ln._computes_low_natively()
    x16 = (rand(rng, 4, 6, 10) * 2).astype(ml_dtypes.bfloat16)
    ref = LayerNormalization()
    ref(x16.astype(np.float32))
    ln(x16)
    ln.set_weights([rand(rng, 10, lo=0.5, hi=1.5), rand(rng, 10)])
    ref.set_weights(ln.get_weights())
    xt = Tensor(x16)
    with GradientTape() as tape:
        tape.watch(xt)
        y = ln(xt)
        loss = ops.sum(ops.cast(y, "float32"))
    assert y.dtype == ml_dtypes.bfloat16
    want = ref(x16.astype(np.float32)).numpy().astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(y.numpy().view(np.uint16), want.view(np.uint16))
    assert tape.gradient(loss, xt).dtype == np.float32


# ------------------------------------------------------------------ layer
def fresh_ln(rng, input_shape, **kwargs):
    layer = LayerNormalization(**kwargs)
    layer._build((None, *input_shape))
    if hasattr(layer, "gamma"):
        layer.gamma[...] = rand(rng, *layer.gamma.shape, lo=0.5, hi=1.5)
    if hasattr(layer, "beta"):
        layer.beta[...] = rand(rng, *layer.beta.shape)
    return layer


@pytest.mark.parametrize("kwargs,shape", [({}, (2, 3, 5)), ({"axis": [-2, -1]}, (2, 3, 4)), ({"axis": 2}, (2, 3, 5)),
                                          ({"rms_scaling": True}, (3, 6)), ({"center": False}, (4, 5))])
def test_layernorm_layer_gradients_finite_differences(rng, kwargs, shape):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = fresh_ln(rng, shape[1:], **kwargs)
    x, dy = rand(rng, *shape) * 2, rand(rng, *shape)
    for v in layer._specs:
        getattr(layer, "d" + v.attr)[...] = 0
    layer.forward(x)
    dx = np.array(layer.backward(dy.copy()))
    f = lambda: float((np.array(layer.forward(x)).astype(np.float64) * dy).sum())
    assert_grad_close(dx, numeric_grad(f, x))
    for v in layer._specs:
        assert_grad_close(getattr(layer, "d" + v.attr), numeric_grad(f, getattr(layer, v.attr)))


def test_layernorm_weights_config_and_errors():
    layer = LayerNormalization(name="ln")
    assert layer.get_config()["axis"] == -1            # as Keras: an int until built
    layer._build((None, 4, 6))
    assert [s.attr for s in layer._specs] == ["gamma", "beta"] and layer.gamma.shape == (6,)
    np.testing.assert_array_equal(layer.gamma, 1)
    np.testing.assert_array_equal(layer.beta, 0)
    cfg = layer.get_config()
    assert (cfg["axis"], cfg["epsilon"], cfg["center"], cfg["scale"], cfg["rms_scaling"]) == ([-1], 1e-3, True, True, False)
    assert LayerNormalization.from_config(cfg).get_config() == {**cfg, "axis": [-1]}
    two = LayerNormalization(axis=(-1, -2))
    two._build((None, 4, 6))
    assert two.axis == [-2, -1] and two.gamma.shape == (4, 6)
    no_center = LayerNormalization(center=False)
    no_center._build((None, 3))
    assert [s.attr for s in no_center._specs] == ["gamma"]
    nc = LayerNormalization(center=False, scale=False)
    nc._build((None, 3))
    assert nc._specs == [] and nc.count_params() == 0
    with pytest.warns(UserWarning, match="deprecated"):
        rms = LayerNormalization(rms_scaling=True, center=True)
    rms._build((None, 3))
    assert [s.attr for s in rms._specs] == ["gamma"]
    for bad, match, err in [({"axis": 1}, "trailing axes", ValueError), ({"axis": [1, 3]}, "trailing axes", ValueError),
                            ({"axis": 0}, "trailing axes", ValueError), ({"axis": 5}, "out of bounds", ValueError),
                            ({"axis": "x"}, "axis", TypeError), ({"epsilon": -1}, "epsilon", ValueError),
                            ({"gamma_constraint": "non_neg"}, "not supported", ValueError)]:
        with pytest.raises(err, match=match):
            LayerNormalization(**bad)._build((None, 4, 5, 6))


def test_layernorm_model_fit_save_load(tmp_path):
    set_random_seed(2)
    rng = np.random.default_rng(2)
    x = rng.normal(3.0, 2.0, size=(96, 5, 4)).astype(np.float32)
    y = rng.integers(0, 3, 96)
    m = Sequential([Dense(8, input_shape=(5, 4)), LayerNormalization(axis=[-2, -1]), Flatten(),
                    Dense(3, activation="softmax")])
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    hist = m.fit(x, y, batch_size=16, epochs=3, verbose=0)
    assert np.isfinite(hist.history["loss"]).all()
    ln = m.layers[1]
    assert not np.allclose(ln.gamma, 1) and not np.allclose(ln.beta, 0)
    m.save(tmp_path / "ln.h5")
    m2 = load_model(tmp_path / "ln.h5")
    assert m2.layers[1].get_config() == ln.get_config()
    for a, b in zip(m.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(m.predict(x), m2.predict(x))


# ------------------------------------------------------------------ Keras 3 parity
KERAS_SCRIPT = r"""
import json, sys, warnings, numpy as np
import keras
cases, xpath, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
res = []
for i, (kwargs, weights) in enumerate(cases):
    x = np.load(xpath + f".{i}.npy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = keras.layers.LayerNormalization(**kwargs)
    layer.build(x.shape)
    layer.set_weights([np.asarray(w, np.float32) for w in weights])
    res.append({"y": keras.ops.convert_to_numpy(layer(x)).tolist(), "config": layer.get_config(),
                "names": [w.name for w in layer.weights], "shapes": [list(w.shape) for w in layer.weights]})
json.dump(res, open(out, "w"))
"""


def keras_backend():
    """A Keras 3 backend that imports here (torch, which CI installs, else jax), or None. Not
    under the sanitizer build (.ci/sanitize.sh preloads ASan, which the subprocess would inherit)."""
    if "libasan" in os.environ.get("LD_PRELOAD", ""):
        return None
    for backend in ("torch", "jax"):
        env = {**os.environ, "KERAS_BACKEND": backend}
        if subprocess.run([sys.executable, "-c", "import keras"], capture_output=True, env=env).returncode == 0:
            return backend
    return None


KERAS_BACKEND = keras_backend()


@pytest.mark.skipif(KERAS_BACKEND is None, reason="keras 3 (torch or jax backend) not installed")
def test_layernorm_matches_keras3(tmp_path, rng):
    import warnings
    cases = [({}, (4, 7, 9)), ({"axis": [-2, -1], "epsilon": 1e-5}, (3, 5, 6)), ({"rms_scaling": True}, (6, 11)),
             ({"center": False}, (5, 13)), ({"scale": False, "axis": 1}, (2, 300))]
    layers, sent = [], []
    for i, (kwargs, shape) in enumerate(cases):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layer = fresh_ln(rng, shape[1:], **kwargs)
        x = (rand(rng, *shape) * 3 + 1).astype(np.float32)
        np.save(tmp_path / f"x.npy.{i}.npy", x)
        layers.append((layer, x))
        sent.append((kwargs, [w.tolist() for w in layer.get_weights()]))
    script = tmp_path / "k.py"
    script.write_text(KERAS_SCRIPT)
    r = subprocess.run([sys.executable, str(script), json.dumps(sent), str(tmp_path / "x.npy"),
                        str(tmp_path / "out.json")], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "KERAS_BACKEND": KERAS_BACKEND})
    assert r.returncode == 0, r.stderr[-3000:]
    for (layer, x), got in zip(layers, json.load(open(tmp_path / "out.json"))):
        np.testing.assert_allclose(layer(x).numpy(), got["y"], rtol=1e-5, atol=2e-5)
        assert [v.name for v in layer.variables] == got["names"]
        assert [list(v.shape) for v in layer.variables] == got["shapes"]
        assert layer.get_config() == {**got["config"], "name": layer.name}


def test_avx2_level_matches_avx512_level():
    """The AVX-512 row passes against the AVX2 ones: rows with 16-lane tails of 1..15, forward
    (y, mean, invstd) and backward (dx, dgamma, dbeta), plain and rms."""
    body = """
r = np.random.default_rng(0)
for C in (1, 7, 15, 17, 33, 100, 129):
    x = (r.standard_normal((9, C)) + 3).astype(np.float32)
    gamma, beta = r.standard_normal(C).astype(np.float32), r.standard_normal(C).astype(np.float32)
    dy = r.standard_normal((9, C)).astype(np.float32)
    for rms in (False, True):
        y, mean, inv = np.empty_like(x), np.empty(9, np.float32), np.empty(9, np.float32)
        _cpu.layernorm_forward(x, gamma, beta, mean, inv, y, 1e-3, rms)
        dx, dg, db = np.empty_like(x), np.zeros(C, np.float32), np.zeros(C, np.float32)
        _cpu.layernorm_backward(x, dy, gamma, mean, inv, dx, dg, db, rms)
        for k, v in dict(y=y, mean=mean, inv=inv, dx=dx, dg=dg, db=db).items():
            out[f"{k}_{C}_{rms}"] = v
"""
    lo, hi = avx2_and_avx512(body)
    for k in hi:
        scale = max(1.0, float(np.abs(hi[k]).max()))
        np.testing.assert_allclose(lo[k], hi[k], rtol=1e-5, atol=1e-6 * scale, err_msg=k)
