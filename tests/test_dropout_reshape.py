"""Dropout, Reshape, ZeroPadding2D; Conv2D with dilation and Dense on N-D input (already in
place: checked here); and every new layer through save/load.

Dropout: inverted (kept values scaled by 1/(1-rate)), only in training, mask drawn from a seed
out of kilnet's generator (set_random_seed repeats it), the same mask applied by backward,
independent of the thread count. PyTorch parity with the mask kilnet drew (torch's own RNG
differs), and for the other layers outputs and gradients against torch's autograd."""
import numpy as np
import pytest

from conftest import assert_grad_close, numeric_grad, rand
from kilnet import _cpu
from kilnet.layers import (Activation, AveragePooling2D, BatchNormalization, Conv2D, Dense, Dropout, Flatten,
                           GlobalAveragePooling2D, MaxPooling2D, Reshape, ZeroPadding2D)
from kilnet.models import Sequential, load_model
from kilnet.utils import set_random_seed

MODULES = [pytest.param(_cpu, id="fast"), pytest.param(_cpu.ref, id="ref")]


# ------------------------------------------------------------------ dropout kernel
@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 0.9])
def test_dropout_kernel_fraction_scale_and_ref(rate):
    n = 200003
    x = np.random.default_rng(0).uniform(0.5, 1.5, n).astype(np.float32)
    out = {}
    for K in (_cpu, _cpu.ref):
        mask, y = np.empty_like(x), np.empty_like(x)
        K.dropout_forward(x, mask, y, rate, 987654321)
        out[K] = (mask, y)
    (mask, y), (mask_r, y_r) = out[_cpu], out[_cpu.ref]
    np.testing.assert_array_equal(mask, mask_r)
    np.testing.assert_array_equal(y, y_r)
    scale = np.float32(1.0 / (1.0 - rate))   # computed in double, as Keras: 10 (not 9.999998) for 0.9
    assert set(np.unique(mask)) <= {0.0, scale}
    np.testing.assert_array_equal(y, x * mask)
    kept = (mask > 0).mean()
    assert abs(kept - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n) + 1e-9
    # neighbouring elements are not correlated (a counter hash, not a weak generator)
    if 0 < rate < 1:
        k = (mask > 0).astype(np.float64)
        assert abs(np.corrcoef(k[:-1], k[1:])[0, 1]) < 0.02


def test_dropout_kernel_seeds_threads_and_in_place():
    x = np.ones(100000, np.float32)
    masks = {}
    old = _cpu.get_num_threads()
    try:
        for nt in (1, 2, 4):
            _cpu.set_num_threads(nt)
            m, y = np.empty_like(x), np.empty_like(x)
            _cpu.dropout_forward(x, m, y, 0.3, 42)
            masks[nt] = m
    finally:
        _cpu.set_num_threads(old)
    np.testing.assert_array_equal(masks[1], masks[2])
    np.testing.assert_array_equal(masks[1], masks[4])
    m2, y2 = np.empty_like(x), np.empty_like(x)
    _cpu.dropout_forward(x, m2, y2, 0.3, 43)
    assert (m2 != masks[1]).mean() > 0.3          # another seed, another mask
    z = x.copy()
    _cpu.dropout_forward(z, m2, z, 0.3, 42)       # in place
    np.testing.assert_array_equal(z, masks[1])
    dy = np.arange(x.size, dtype=np.float32)
    _cpu.dropout_backward(masks[1], dy, dy)       # in place
    np.testing.assert_array_equal(dy, np.arange(x.size, dtype=np.float32) * masks[1])


@pytest.mark.parametrize("K", MODULES)
def test_dropout_kernel_bad_input(K):
    x, m, y = np.ones(10, np.float32), np.empty(10, np.float32), np.empty(10, np.float32)
    for rate in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="rate"):
            K.dropout_forward(x, m, y, rate, 1)
    with pytest.raises(ValueError, match="overlaps"):
        K.dropout_forward(x, x, y, 0.5, 1)
    with pytest.raises(ValueError, match="shape"):
        K.dropout_forward(x, m[:5], y, 0.5, 1)
    with pytest.raises(TypeError):
        K.dropout_forward(x, m, y, 0.5, -1)
    with pytest.raises(ValueError, match="overlaps"):
        K.dropout_backward(m, y, m)


# ------------------------------------------------------------------ dropout layer
def test_dropout_layer_training_inference_and_backward(rng):
    layer = Dropout(0.4)
    x = rand(rng, 8, 5, 5, 3, lo=0.5, hi=1.5)
    assert layer(x, training=False) is not None
    assert layer.forward(x, False) is x                         # inference: identity, no copy
    assert layer.backward(x, True) is x
    y = np.array(layer.forward(x, True))
    mask = np.array(layer._state()["mask"])
    np.testing.assert_array_equal(y, x * mask)
    dy = rand(rng, *x.shape)
    dx = np.array(layer.backward(dy))
    np.testing.assert_array_equal(dx, dy * mask)                # the forward's mask, exactly
    np.testing.assert_array_equal(dx == 0, y == 0)
    assert 0.45 < (mask > 0).mean() < 0.75
    # the layer is linear in x for a fixed mask: the gradient check with the mask held
    f = lambda: float((x * mask).astype(np.float64).ravel() @ dy.ravel())
    assert_grad_close(dx, numeric_grad(f, x))
    y2 = np.array(layer.forward(x, True))
    assert (y2 != y).any()                                      # a new mask each step
    assert Dropout(0.0).forward(x, True) is x


def test_dropout_repeatable_with_seeds(rng):
    x = rand(rng, 4, 100)
    outs = []
    for _ in range(2):
        set_random_seed(11)
        layer = Dropout(0.5)
        outs.append([np.array(layer.forward(x, True)) for _ in range(3)])
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)
    a, b = Dropout(0.5, seed=5), Dropout(0.5, seed=5)
    np.testing.assert_array_equal(a.forward(x, True), b.forward(x, True))


def test_dropout_matches_torch_for_its_mask(rng):
    torch = pytest.importorskip("torch", exc_type=ImportError)
    layer = Dropout(0.3)
    x, dy = rand(rng, 6, 7), rand(rng, 6, 7)
    y = np.array(layer.forward(x, True))
    dx = np.array(layer.backward(dy))
    keep = layer._state()["mask"] > 0
    # torch's inverted dropout with the same kept set: x * keep / (1 - p)
    xt = torch.from_numpy(x).requires_grad_()
    yt = xt * torch.from_numpy(keep) / (1 - 0.3)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-6)
    # and the statistics match torch.nn.Dropout's: E[y] = x
    big = np.ones(400000, np.float32)
    assert abs(np.array(Dropout(0.3).forward(big, True)).mean() - 1.0) < 0.01


def test_dropout_config_and_bad_args():
    cfg = Dropout(0.25, seed=3, name="d").get_config()
    assert (cfg["rate"], cfg["seed"], cfg["noise_shape"]) == (0.25, 3, None)
    assert Dropout.from_config(cfg).get_config() == cfg
    for bad, exc in [(1.0, ValueError), (-0.1, ValueError), ("0.5", TypeError), (float("nan"), ValueError)]:
        with pytest.raises(exc, match="rate"):
            Dropout(bad)
    with pytest.raises(ValueError, match="noise_shape"):
        Dropout(0.5, noise_shape=(None, 1, 1, 3))


# ------------------------------------------------------------------ reshape, zero padding
def test_reshape(rng):
    layer = Reshape((-1, 3))
    assert layer._build((None, 4, 6)) == (None, 8, 3)
    x = rand(rng, 2, 4, 6)
    y = layer.forward(x)
    assert y.shape == (2, 8, 3) and np.shares_memory(y, x)
    assert layer.backward(y).shape == x.shape
    assert Reshape((2, 12))._build((None, 4, 6)) == (None, 2, 12)
    cfg = Reshape((2, -1), name="r").get_config()
    assert cfg["target_shape"] == [2, -1] and Reshape.from_config(cfg).target_shape == (2, -1)
    with pytest.raises(ValueError, match="cannot reshape"):
        Reshape((5, 5))._build((None, 4, 6))
    with pytest.raises(ValueError, match="cannot reshape"):
        Reshape((-1, 5))._build((None, 4, 6))
    for bad in [(-1, -1), (0, 3), (2.5,), ()]:
        with pytest.raises(ValueError, match="target_shape"):
            Reshape(bad)


@pytest.mark.parametrize("padding,expect", [(1, ((1, 1), (1, 1))), ((2, 0), ((2, 2), (0, 0))),
                                            (((0, 1), (2, 3)), ((0, 1), (2, 3)))])
def test_zero_padding(rng, padding, expect):
    layer = ZeroPadding2D(padding)
    assert layer.padding == expect
    (t, b), (l, r) = expect
    assert layer._build((None, 3, 4, 2)) == (None, 3 + t + b, 4 + l + r, 2)
    x = rand(rng, 2, 3, 4, 2)
    for _ in range(2):   # the reused buffer keeps zero borders
        y = np.array(layer.forward(x))
        np.testing.assert_array_equal(y, np.pad(x, ((0, 0), (t, b), (l, r), (0, 0))))
        x = x + 1
    dy = rand(rng, *y.shape)
    np.testing.assert_array_equal(layer.backward(dy), dy[:, t:t + 3, l:l + 4])
    cfg = layer.get_config()
    assert cfg["padding"] == [list(p) for p in expect]
    assert ZeroPadding2D.from_config(cfg).padding == expect


def test_zero_padding_matches_torch(rng):
    torch = pytest.importorskip("torch", exc_type=ImportError)
    layer = ZeroPadding2D(((1, 2), (0, 3)))
    layer._build((None, 3, 4, 2))
    x, dy = rand(rng, 2, 3, 4, 2), rand(rng, 2, 6, 7, 2)
    y, dx = np.array(layer.forward(x)), np.array(layer.backward(dy))
    xt = torch.from_numpy(x).requires_grad_()
    yt = torch.nn.functional.pad(xt, (0, 0, 0, 3, 1, 2))
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(dx, xt.grad.numpy())
    for bad in [-1, (1, 2, 3), ((1, 2), (3,)), "1", ((1, -1), (0, 0))]:
        with pytest.raises((ValueError, TypeError), match="padding"):
            ZeroPadding2D(bad)


# ------------------------------------------------------------------ Conv2D dilation, Dense on N-D
def layer_grads(layer, x, dy):
    for s in layer._specs:
        getattr(layer, "d" + s.attr)[...] = 0
    y = np.array(layer.forward(x, True))
    dx = np.array(layer.backward(dy.copy()))
    return y, dx, {s.attr: np.array(getattr(layer, "d" + s.attr)) for s in layer._specs}


@pytest.mark.parametrize("padding,dilation", [("valid", (2, 2)), ("same", (2, 3)), ("same", (3, 1))])
def test_conv2d_dilation_gradients_and_torch(rng, padding, dilation):
    layer = Conv2D(3, (3, 2), padding=padding, dilation_rate=dilation, activation="tanh")
    layer._build((None, 9, 8, 2))
    layer.bias[...] = rand(rng, 3)
    x = rand(rng, 2, 9, 8, 2)
    dy = rand(rng, 2, *layer.output_shape[1:])
    y, dx, g = layer_grads(layer, x, dy)
    f = lambda: float((np.array(layer.forward(x, True)).astype(np.float64) * dy).sum())
    assert_grad_close(dx, numeric_grad(f, x))
    assert_grad_close(g["kernel"], numeric_grad(f, layer.kernel))
    torch = pytest.importorskip("torch", exc_type=ImportError)
    F = torch.nn.functional
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    wt = torch.from_numpy(layer.kernel.transpose(3, 2, 0, 1).copy()).requires_grad_()
    (ph, pw) = layer._pad
    eff = [(k - 1) * d + 1 for k, d in zip(layer.kernel_size, dilation)]
    # Keras 'same' pads (eff-1) in total, the odd pixel at the bottom/right
    xpad = F.pad(xt, (pw, eff[1] - 1 - pw, ph, eff[0] - 1 - ph)) if padding == "same" else xt
    yt = torch.tanh(F.conv2d(xpad, wt, torch.from_numpy(layer.bias), dilation=dilation))
    yt.backward(torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()))
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g["kernel"], wt.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-4, atol=1e-5)


def test_dense_on_nd_input_gradients_and_torch(rng):
    layer = Dense(4, activation="sigmoid")
    layer._build((None, 3, 5, 6))
    assert layer.output_shape == (None, 3, 5, 4)
    layer.bias[...] = rand(rng, 4)
    x, dy = rand(rng, 2, 3, 5, 6), rand(rng, 2, 3, 5, 4)
    y, dx, g = layer_grads(layer, x, dy)
    assert dx.shape == x.shape
    f = lambda: float((np.array(layer.forward(x, True)).astype(np.float64) * dy).sum())
    assert_grad_close(dx, numeric_grad(f, x))
    assert_grad_close(g["kernel"], numeric_grad(f, layer.kernel))
    torch = pytest.importorskip("torch", exc_type=ImportError)
    lin = torch.nn.Linear(6, 4)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(layer.kernel.T.copy()))
        lin.bias.copy_(torch.from_numpy(layer.bias))
    xt = torch.from_numpy(x).requires_grad_()
    yt = torch.sigmoid(lin(xt))
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g["kernel"], lin.weight.grad.numpy().T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g["bias"], lin.bias.grad.numpy(), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ every new layer: fit, save, load
def test_new_layers_train_save_and_load(tmp_path):
    set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(48, 9, 9, 2)).astype(np.float32)
    y = (x[:, :4].mean(axis=(1, 2, 3)) > x[:, 5:].mean(axis=(1, 2, 3))).astype(np.int64)
    m = Sequential([
        ZeroPadding2D(1, input_shape=(9, 9, 2)),
        Conv2D(4, 3, dilation_rate=2, use_bias=False), BatchNormalization(), Activation("relu"),
        MaxPooling2D(2, padding="same"), Dropout(0.2),
        Conv2D(6, 2, padding="same"), AveragePooling2D(2, strides=1),
        Reshape((-1, 6)), Dense(5, activation="relu"), Flatten(), Reshape((9, 5, 1)),
        GlobalAveragePooling2D(), Dense(2, activation="softmax")])
    m.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = m.fit(x, y, batch_size=8, epochs=4, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    p = tmp_path / "all.h5"
    m.save(p)
    m2 = load_model(p)
    assert [type(l).__name__ for l in m2.layers] == [type(l).__name__ for l in m.layers]
    for l1, l2 in zip(m.layers, m2.layers):
        assert l1.get_config() == l2.get_config()
    for a, b in zip(m.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(m.predict(x), m2.predict(x))
    assert m2.evaluate(x, y, verbose=0) == m.evaluate(x, y, verbose=0)
    m2.fit(x, y, batch_size=8, epochs=1, verbose=0)   # the loaded model trains on


def test_small_cnn_model_and_cli_option(tmp_path, monkeypatch):
    from kilnet import cli
    args = cli.build_parser().parse_args(["train", "--model", "small-cnn", "--limit", "64", "--epochs", "1"])
    assert args.model == "small-cnn" and args.batch_size is None     # the model's default (64) applies
    m = cli.small_cnn_model(epochs=1, steps_per_epoch=2)
    assert m.count_params() == 87594 < 100_000
    names = [type(l).__name__ for l in m.layers]
    assert {"BatchNormalization", "MaxPooling2D", "Dropout"} <= set(names)
    set_random_seed(0)
    x = np.random.default_rng(0).uniform(size=(128, 28, 28, 1)).astype(np.float32)
    h = m.fit(x, np.arange(128) % 10, batch_size=64, epochs=1, verbose=0)
    assert np.isfinite(h.history["loss"][0]) and m.optimizer.learning_rate == 0.0   # cosine decayed to 0
