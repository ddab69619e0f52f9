"""The layers beyond Dense/Conv2D: 1-D and global pooling, up-sampling, cropping, rescaling,
Conv2DTranspose, DepthwiseConv2D, SeparableConv2D and the activation layers. Each against Keras 3
(jax backend, in a subprocess) with the same weights: output, weight names and shapes, config
keys; gradients against PyTorch where it has the operation."""
import numpy as np
import pytest

import kilnet
from conftest import HAVE_TORCH
from keras_ref import needs_keras, run_keras_layers
from kilnet import layers

# (id, class name, kwargs, input shape, call kwargs maker or None)
_MASK = lambda r, shape: {"mask": (r.uniform(size=shape[:2]) > 0.3)}   # noqa: E731
CASES = [
    ("maxpool1d", "MaxPooling1D", {}, (2, 11, 4), None),
    ("maxpool1d_same_s2", "MaxPooling1D", {"pool_size": 3, "strides": 2, "padding": "same"}, (2, 11, 4), None),
    ("maxpool1d_overlap", "MaxPooling1D", {"pool_size": 3, "strides": 1}, (3, 8, 5), None),
    ("avgpool1d", "AveragePooling1D", {"pool_size": 2}, (2, 11, 4), None),
    ("avgpool1d_same_s2", "AveragePooling1D", {"pool_size": 3, "strides": 2, "padding": "same"}, (2, 10, 4), None),
    ("gap1d", "GlobalAveragePooling1D", {}, (3, 7, 5), None),
    ("gap1d_keepdims", "GlobalAveragePooling1D", {"keepdims": True}, (3, 7, 5), None),
    ("gap1d_mask", "GlobalAveragePooling1D", {}, (4, 9, 3), _MASK),
    ("gmp1d", "GlobalMaxPooling1D", {}, (3, 7, 5), None),
    ("gmp1d_keepdims", "GlobalMaxPooling1D", {"keepdims": True}, (3, 7, 5), None),
    ("gmp2d", "GlobalMaxPooling2D", {}, (2, 5, 6, 3), None),
    ("gmp2d_keepdims", "GlobalMaxPooling2D", {"keepdims": True}, (2, 5, 6, 3), None),
    ("upsampling1d", "UpSampling1D", {"size": 3}, (2, 5, 3), None),
    ("upsampling2d", "UpSampling2D", {"size": (2, 3)}, (2, 4, 5, 3), None),
    ("upsampling2d_bilinear", "UpSampling2D", {"size": (2, 3), "interpolation": "bilinear"}, (2, 4, 5, 3), None),
    ("upsampling2d_bilinear_1px", "UpSampling2D", {"size": 2, "interpolation": "bilinear"}, (1, 1, 3, 2), None),
    ("cropping2d", "Cropping2D", {"cropping": ((1, 2), (0, 1))}, (2, 6, 5, 3), None),
    ("cropping2d_int", "Cropping2D", {"cropping": 1}, (2, 6, 5, 3), None),
    ("rescaling", "Rescaling", {"scale": 1 / 255, "offset": -0.5}, (2, 4, 4, 3), None),
    ("rescaling_channels", "Rescaling", {"scale": [0.5, 2.0, -1.0], "offset": [0.0, 1.0, 2.0]}, (2, 4, 4, 3), None),
    ("convT_valid", "Conv2DTranspose", {"filters": 4, "kernel_size": 3}, (2, 5, 6, 3), None),
    ("convT_same_s2", "Conv2DTranspose", {"filters": 4, "kernel_size": 3, "strides": 2, "padding": "same"},
     (2, 5, 6, 3), None),
    ("convT_valid_s2_k4_relu", "Conv2DTranspose", {"filters": 5, "kernel_size": 4, "strides": 2,
                                                   "activation": "relu"}, (2, 4, 3, 2), None),
    ("convT_outpad", "Conv2DTranspose", {"filters": 3, "kernel_size": (3, 2), "strides": (3, 2),
                                         "output_padding": (2, 1), "padding": "same"}, (2, 4, 5, 3), None),
    ("convT_dilated", "Conv2DTranspose", {"filters": 3, "kernel_size": 3, "dilation_rate": 2, "use_bias": False},
     (2, 5, 5, 2), None),
    ("depthwise", "DepthwiseConv2D", {"kernel_size": 3}, (2, 7, 6, 4), None),
    ("depthwise_same_s2_dm3", "DepthwiseConv2D", {"kernel_size": 3, "strides": 2, "padding": "same",
                                                   "depth_multiplier": 3, "activation": "gelu"}, (2, 7, 6, 4), None),
    ("depthwise_dilated", "DepthwiseConv2D", {"kernel_size": (2, 3), "dilation_rate": 2, "depth_multiplier": 2,
                                              "use_bias": False}, (2, 8, 9, 3), None),
    ("separable", "SeparableConv2D", {"filters": 6, "kernel_size": 3}, (2, 7, 6, 4), None),
    ("separable_same_s2_dm2", "SeparableConv2D", {"filters": 5, "kernel_size": 3, "strides": 2, "padding": "same",
                                                  "depth_multiplier": 2, "activation": "relu"}, (2, 9, 8, 3), None),
    ("relu", "ReLU", {}, (3, 10), None),
    ("relu_args", "ReLU", {"max_value": 1.5, "negative_slope": 0.1, "threshold": 0.2}, (3, 10), None),
    ("relu6", "ReLU", {"max_value": 6.0}, (3, 10), None),
    ("leaky_relu", "LeakyReLU", {}, (3, 10), None),
    ("leaky_relu_01", "LeakyReLU", {"negative_slope": 0.1}, (3, 10), None),
    ("elu", "ELU", {"alpha": 0.5}, (3, 10), None),
    ("prelu", "PReLU", {}, (3, 4, 5), None),
    ("prelu_shared", "PReLU", {"shared_axes": [1, 2]}, (2, 4, 5, 3), None),
    ("softmax", "Softmax", {}, (3, 7), None),
    ("softmax_axis1", "Softmax", {"axis": 1}, (3, 4, 5), None),
    ("softmax_mask", "Softmax", {}, (3, 7), lambda r, shape: {"mask": r.uniform(size=shape) > 0.3}),
]
ACT_NAMES = ["gelu", "silu", "swish", "elu", "selu", "softplus", "softsign", "leaky_relu", "relu6", "hard_sigmoid",
             "exponential", "mish", "linear", "hard_silu"]
CASES += [(f"activation_{n}", "Activation", {"activation": n}, (3, 12), None) for n in ACT_NAMES]
CASES += [(f"dense_{n}", "Dense", {"units": 5, "activation": n}, (4, 6), None) for n in ("gelu", "silu", "mish")]
IDS = [c[0] for c in CASES]


def _make(case, seed):
    _, cls, kwargs, shape, call_maker = case
    r = np.random.default_rng(seed)
    x = (r.standard_normal(shape) * 2).astype(np.float32)
    if cls == "Rescaling":
        x = r.uniform(0, 255, size=shape).astype(np.float32)
    call_kwargs = call_maker(r, shape) if call_maker else {}
    layer = getattr(layers, cls)(**kwargs)
    layer(x, **call_kwargs)
    weights = [(r.standard_normal(w.shape) * 0.5).astype(np.float32) for w in layer.get_weights()]
    layer.set_weights(weights)
    return layer, x, weights, call_kwargs


@pytest.fixture(scope="module")
def keras_out(tmp_path_factory):
    cases = []
    for i, case in enumerate(CASES):
        _, x, weights, call_kwargs = _make(case, i)
        cases.append({"class_name": case[1], "kwargs": case[2], "x": x, "weights": weights,
                      "call_kwargs": call_kwargs})
    return run_keras_layers(str(tmp_path_factory.mktemp("keras")), cases)


@needs_keras
@pytest.mark.parametrize("i", range(len(CASES)), ids=IDS)
def test_same_output_as_keras(i, keras_out):
    layer, x, _, call_kwargs = _make(CASES[i], i)
    y = layer(x, **call_kwargs).numpy()
    expected = keras_out[0][i]
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=2e-5, atol=2e-5)


@needs_keras
@pytest.mark.parametrize("i", range(len(CASES)), ids=IDS)
def test_weights_and_config_as_keras(i, keras_out):
    layer, x, _, _ = _make(CASES[i], i)
    info = keras_out[1][i]
    assert [[v.name, list(v.shape)] for v in layer.variables] == info["weights"]
    ours, theirs = layer.get_config(), info["config"]
    missing = set(theirs) - set(ours) - {"activity_regularizer", "dtype", "quantization_config"}
    assert not missing, f"config keys Keras writes and kilnet does not: {missing}"
    for key in set(theirs) & set(ours) - {"name", "dtype"}:
        a, b = ours[key], theirs[key]
        if isinstance(b, str) and not isinstance(a, str):
            a = str(a)   # the reference config was written with json default=str
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            a, b = list(a), list(b)
        assert a == b or (isinstance(a, dict) and isinstance(b, dict)), f"{key}: kilnet {a!r}, Keras {b!r}"
    # and the config builds the same layer back
    clone = type(layer).from_config(layer.get_config())
    clone(x)
    assert [w.shape for w in clone.get_weights()] == [w.shape for w in layer.get_weights()]


# ------------------------------------------------------------------------- gradients
def _grads(layer, x, dy, **call_kwargs):
    """(dx, [weight gradients]) of sum(layer(x) * dy) through the tape."""
    xt = kilnet.Tensor(x.copy())
    with kilnet.GradientTape() as tape:
        tape.watch(xt)
        y = layer(xt, **call_kwargs)
    vs = layer.trainable_variables
    g = tape.gradient(y, [xt, *vs], output_gradients=kilnet.Tensor(dy))
    return y.numpy(), g[0].numpy(), [v.numpy() for v in g[1:]]


needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed")


def _nchw(a):
    import torch
    return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).requires_grad_(True)


@needs_torch
@pytest.mark.parametrize("kw", [dict(kernel_size=3), dict(kernel_size=3, strides=2, padding="same"),
                                dict(kernel_size=(4, 3), strides=(2, 3), padding="valid"),
                                dict(kernel_size=3, strides=2, padding="same", output_padding=0)])
def test_conv2d_transpose_gradients_match_torch(kw, rng):
    import torch
    x = rng.standard_normal((2, 5, 6, 3)).astype(np.float32)
    layer = layers.Conv2DTranspose(4, **kw)
    y0 = layer(x).numpy()
    dy = rng.standard_normal(y0.shape).astype(np.float32)
    y, dx, (dw, db) = _grads(layer, x, dy)
    w = layer.get_weights()[0]   # (kh, kw, filters, in) -> torch (in, filters, kh, kw)
    tw = torch.from_numpy(w.transpose(3, 2, 0, 1).copy()).requires_grad_(True)
    tb = torch.from_numpy(layer.get_weights()[1]).requires_grad_(True)
    tx = _nchw(x)
    eff = np.array(layer.kernel_size)
    stride = np.array(layer.strides)
    top = np.array(layer._pad)                         # the equivalent convolution's padding
    tpad = eff - 1 - top                               # torch pads the dilated input by k-1-padding
    out_hw = np.array(y.shape[1:3])
    base = (np.array(x.shape[1:3]) - 1) * stride - 2 * top + eff
    ty = torch.nn.functional.conv_transpose2d(tx, tw, tb, stride=tuple(stride), padding=tuple(top),
                                              output_padding=tuple(np.maximum(out_hw - base, 0)))
    ty = ty[:, :, :out_hw[0], :out_hw[1]]
    assert tpad.min() >= 0
    np.testing.assert_allclose(y, ty.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
    ty.backward(torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()))
    np.testing.assert_allclose(dx, tx.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, tw.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-4, atol=1e-4)


@needs_torch
@pytest.mark.parametrize("k,s,pad,d,m", [(3, 1, "valid", 1, 1), (3, 2, "same", 1, 2), (2, 1, "same", 2, 3)])
def test_depthwise_and_separable_gradients_match_torch(k, s, pad, d, m, rng):
    import torch
    x = rng.standard_normal((2, 7, 8, 3)).astype(np.float32)
    dl = layers.DepthwiseConv2D(k, strides=s, padding=pad, dilation_rate=d, depth_multiplier=m)
    sl = layers.SeparableConv2D(5, k, strides=s, padding=pad, dilation_rate=d, depth_multiplier=m)
    for layer in (dl, sl):
        y0 = layer(x).numpy()
        dy = rng.standard_normal(y0.shape).astype(np.float32)
        y, dx, grads = _grads(layer, x, dy)
        tx = _nchw(x)
        dk = layer.get_weights()[0]   # (kh, kw, C, M) -> torch (C*M, 1, kh, kw), groups C
        tdk = torch.from_numpy(dk.reshape(*dk.shape[:2], -1).transpose(2, 0, 1)[:, None].copy()).requires_grad_(True)
        ph, pw = layer._pad
        eff = (np.array(layer.kernel_size) - 1) * d + 1
        need = [(y.shape[1] - 1) * s + eff[0] - x.shape[1] - ph, (y.shape[2] - 1) * s + eff[1] - x.shape[2] - pw]
        txp = torch.nn.functional.pad(tx, (pw, max(need[1], 0), ph, max(need[0], 0)))
        t = torch.nn.functional.conv2d(txp, tdk, None, stride=s, dilation=d, groups=3)
        tparams = [tdk]
        if layer is sl:
            pk = layer.get_weights()[1]
            tpk = torch.from_numpy(pk[0, 0].T[:, :, None, None].copy()).requires_grad_(True)
            tparams.append(tpk)
            t = torch.nn.functional.conv2d(t, tpk)
        tbias = torch.from_numpy(layer.get_weights()[-1]).requires_grad_(True)
        tparams.append(tbias)
        t = t + tbias[None, :, None, None]
        np.testing.assert_allclose(y, t.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
        t.backward(torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()))
        np.testing.assert_allclose(dx, tx.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)
        tg = [tdk.grad.numpy()[:, 0].transpose(1, 2, 0).reshape(dk.shape)]
        if layer is sl:
            tg.append(tparams[1].grad.numpy()[:, :, 0, 0].T[None, None])
        tg.append(tbias.grad.numpy())
        for a, b in zip(grads, tg):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-4)


@needs_torch
def test_pooling1d_and_global_max_gradients_match_torch(rng):
    import torch
    x = rng.standard_normal((3, 11, 4)).astype(np.float32)
    tx = lambda: torch.from_numpy(x.transpose(0, 2, 1).copy()).requires_grad_(True)   # noqa: E731
    F = torch.nn.functional
    cases = [(layers.MaxPooling1D(3, strides=2), lambda t: F.max_pool1d(t, 3, 2)),
             (layers.AveragePooling1D(2), lambda t: F.avg_pool1d(t, 2)),
             (layers.GlobalMaxPooling1D(), lambda t: t.amax(dim=2)),
             (layers.GlobalAveragePooling1D(), lambda t: t.mean(dim=2))]
    for layer, tf in cases:
        y0 = layer(x).numpy()
        dy = rng.standard_normal(y0.shape).astype(np.float32)
        _, dx, _ = _grads(layer, x, dy)
        t = tx()
        out = tf(t)
        tdy = torch.from_numpy(dy.transpose(0, 2, 1).copy() if dy.ndim == 3 else dy)
        out.backward(tdy)
        np.testing.assert_allclose(dx, t.grad.numpy().transpose(0, 2, 1), rtol=1e-5, atol=1e-6)


@needs_torch
def test_upsampling_and_cropping_gradients_match_torch(rng):
    import torch
    x = rng.standard_normal((2, 4, 5, 3)).astype(np.float32)
    F = torch.nn.functional
    cases = [(layers.UpSampling2D((2, 3)), lambda t: F.interpolate(t, scale_factor=(2, 3), mode="nearest")),
             (layers.UpSampling2D(2, interpolation="bilinear"),
              lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)),
             (layers.Cropping2D(((1, 0), (2, 1))), lambda t: t[:, :, 1:, 2:-1])]
    for layer, tf in cases:
        y0 = layer(x).numpy()
        dy = rng.standard_normal(y0.shape).astype(np.float32)
        y, dx, _ = _grads(layer, x, dy)
        t = _nchw(x)
        out = tf(t)
        np.testing.assert_allclose(y, out.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
        out.backward(torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()))
        np.testing.assert_allclose(dx, t.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    x1 = rng.standard_normal((2, 5, 3)).astype(np.float32)
    layer = layers.UpSampling1D(3)
    dy = rng.standard_normal((2, 15, 3)).astype(np.float32)
    _, dx, _ = _grads(layer, x1, dy)
    np.testing.assert_allclose(dx, dy.reshape(2, 5, 3, 3).sum(axis=2), rtol=1e-6)


@needs_torch
def test_activation_layers_gradients_match_torch(rng):
    import torch
    x = (rng.standard_normal((4, 9)) * 3).astype(np.float32)
    F = torch.nn.functional
    prelu = layers.PReLU()
    prelu(x)
    prelu.set_weights([rng.uniform(0, 0.5, size=(9,)).astype(np.float32)])
    alpha = torch.from_numpy(prelu.get_weights()[0]).requires_grad_(True)
    cases = [(layers.ReLU(), F.relu), (layers.ReLU(max_value=6.0), F.relu6),
             (layers.LeakyReLU(), lambda t: F.leaky_relu(t, 0.3)), (layers.ELU(0.7), lambda t: F.elu(t, 0.7)),
             (layers.Softmax(), lambda t: F.softmax(t, -1)), (prelu, lambda t: torch.where(t > 0, t, alpha * t))]
    cases += [(layers.Activation(n), f) for n, f in
              [("gelu", F.gelu), ("silu", F.silu), ("selu", F.selu), ("softplus", F.softplus),
               ("softsign", F.softsign), ("relu6", F.relu6), ("hard_sigmoid", F.hardsigmoid), ("mish", F.mish),
               ("hard_silu", F.hardswish), ("elu", F.elu), ("exponential", torch.exp)]]
    for layer, tf in cases:
        dy = rng.standard_normal(x.shape).astype(np.float32)
        y, dx, grads = _grads(layer, x, dy)
        t = torch.from_numpy(x.copy()).requires_grad_(True)
        out = tf(t)
        np.testing.assert_allclose(y, out.detach().numpy(), rtol=1e-5, atol=1e-5, err_msg=repr(layer))
        out.backward(torch.from_numpy(dy))
        np.testing.assert_allclose(dx, t.grad.numpy(), rtol=1e-4, atol=1e-5, err_msg=repr(layer))
        if layer is prelu:
            np.testing.assert_allclose(grads[0], alpha.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_prelu_shared_axes_gradient_is_summed():
    r = np.random.default_rng(0)
    x = r.standard_normal((2, 3, 4, 5)).astype(np.float32)
    layer = layers.PReLU(shared_axes=[1, 2])
    layer(x)
    assert layer.get_weights()[0].shape == (1, 1, 5)
    dy = r.standard_normal(x.shape).astype(np.float32)
    _, _, (dalpha,) = _grads(layer, x, dy)
    np.testing.assert_allclose(dalpha[0, 0], np.where(x <= 0, dy * x, 0).sum(axis=(0, 1, 2)), rtol=1e-5)


def test_masked_global_average_excludes_masked_steps():
    r = np.random.default_rng(0)
    x = r.standard_normal((3, 6, 2)).astype(np.float32)
    mask = np.array([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 1, 0, 1, 0, 1]], bool)
    layer = layers.GlobalAveragePooling1D()
    dy = r.standard_normal((3, 2)).astype(np.float32)
    y, dx, _ = _grads(layer, x, dy, mask=mask)
    for i in range(3):
        np.testing.assert_allclose(y[i], x[i][mask[i]].mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(dx[i], mask[i][:, None] * dy[i] / mask[i].sum(), rtol=1e-6)
    with pytest.raises(ValueError, match="mask"):
        layer(x, mask=np.ones((3, 5), bool))


# ------------------------------------------------------------------------- activations as functions
@pytest.mark.parametrize("name", ACT_NAMES + ["relu", "sigmoid", "tanh"])
def test_activation_functions_match_finite_differences_float64(name):
    fn = kilnet.activations.get(name)
    r = np.random.default_rng(3)
    x = r.uniform(-2.5, 2.5, size=(17,))
    x = x[np.abs(np.abs(x) - 3) > 0.05]        # away from the kinks of hard_sigmoid/relu6/hard_silu
    x = x[np.abs(x) > 0.05]                    # and from 0
    xt = kilnet.Tensor(x.copy())
    with kilnet.GradientTape() as tape:
        tape.watch(xt)
        y = fn(xt)
    g = tape.gradient(y, xt, output_gradients=kilnet.Tensor(np.ones_like(x))).numpy()
    eps = 1e-6
    num = (fn(kilnet.Tensor(x + eps)).numpy() - fn(kilnet.Tensor(x - eps)).numpy()) / (2 * eps)
    assert y.numpy().dtype == np.float64
    np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-7)


def test_activation_names_and_functions():
    from kilnet import activations
    assert activations.get("swish") is activations.silu
    assert activations.get(None) is activations.linear
    assert layers.Dense(2, activation="swish").get_config()["activation"] == "silu"
    assert layers.Dense(2, activation=activations.gelu).get_config()["activation"] == "gelu"
    g = activations.gelu(kilnet.Tensor(np.array([1.0])), approximate=True).numpy()
    np.testing.assert_allclose(g, 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (1 + 0.044715))), rtol=1e-12)
    np.testing.assert_allclose(activations.hard_sigmoid(kilnet.Tensor(np.array([-4.0, 0.6, 4.0]))).numpy(),
                               [0.0, 0.6, 1.0])   # Keras 3: relu6(x + 3) / 6, not 0.2x + 0.5
    np.testing.assert_allclose(activations.relu(kilnet.Tensor(np.array([-1.0, 0.1, 0.5, 3.0])), negative_slope=0.5,
                                                max_value=2.0, threshold=0.2).numpy(), [-0.6, -0.05, 0.5, 2.0])
    with pytest.raises(ValueError, match="unknown activation"):
        layers.Dense(2, activation="swishy")


# ------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("make,match", [
    (lambda: layers.Conv2DTranspose(2, 3, data_format="channels_first"), "channels_last"),
    (lambda: layers.Conv2DTranspose(2, 3, strides=2, output_padding=2), "output_padding"),
    (lambda: layers.DepthwiseConv2D(3, depth_multiplier=0), "depth_multiplier"),
    (lambda: layers.SeparableConv2D(4, 3, padding="causal"), "padding"),
    (lambda: layers.MaxPooling1D(2, data_format="channels_first"), "channels_last"),
    (lambda: layers.UpSampling2D(interpolation="bicubic"), "bicubic"),
    (lambda: layers.Cropping2D(((1, 2, 3), (0, 0))), "cropping"),
    (lambda: layers.ReLU(max_value=-1.0), "max_value"),
    (lambda: layers.PReLU(shared_axes=[0]), "shared_axes"),
])
def test_bad_arguments_are_refused(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_bad_input_shapes_are_refused():
    with pytest.raises(ValueError, match="steps"):
        layers.MaxPooling1D(4)(np.zeros((2, 3, 2), np.float32))
    with pytest.raises(ValueError, match="leaves nothing"):
        layers.Cropping2D(2)(np.zeros((1, 4, 6, 1), np.float32))
    with pytest.raises(ValueError, match="batch, height, width"):
        layers.DepthwiseConv2D(3)(np.zeros((2, 8, 3), np.float32))
    with pytest.raises(ValueError, match="out of range"):
        layers.PReLU(shared_axes=[3])(np.zeros((2, 4, 3), np.float32))


def test_mask_in_a_functional_model():
    x, m = kilnet.Input((6, 3)), kilnet.Input((6,))
    y = layers.GlobalAveragePooling1D()(x, mask=m)
    assert tuple(y.shape) == (None, 3)
    model = kilnet.Model([x, m], y)
    xv = np.random.default_rng(0).standard_normal((2, 6, 3)).astype(np.float32)
    mv = np.array([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], np.float32)
    out = model.predict([xv, mv])
    np.testing.assert_allclose(out[0], xv[0, :2].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(out[1], xv[1].mean(axis=0), rtol=1e-6)


@pytest.mark.parametrize("kw", [dict(max_value=1.5, negative_slope=0.1, threshold=0.2), dict(threshold=-0.5),
                                dict(negative_slope=0.3, max_value=2.0)])
def test_general_relu_matches_finite_differences_float64(kw):
    x = np.random.default_rng(5).uniform(-3, 3, size=(40,))
    x = x[np.min(np.abs(x[:, None] - np.array([0.0, 0.2, -0.5, 1.5, 2.0])), axis=1) > 0.05]   # off the kinks
    xt = kilnet.Tensor(x.copy())
    with kilnet.GradientTape() as tape:
        tape.watch(xt)
        y = kilnet.activations.relu(xt, **kw)
    g = tape.gradient(y, xt, output_gradients=kilnet.Tensor(np.ones_like(x))).numpy()
    f = lambda v: kilnet.activations.relu(kilnet.Tensor(v), **kw).numpy()   # noqa: E731
    np.testing.assert_allclose(g, (f(x + 1e-6) - f(x - 1e-6)) / 2e-6, rtol=1e-6, atol=1e-8)
