"""Layers: Dense and Conv2D against numpy and finite differences through the layer API,
shapes, configs, and PyTorch parity for the layers' outputs and gradients."""
import numpy as np
import pytest

from conftest import HAVE_TORCH, assert_grad_close, numeric_grad, rand
from kilnet.layers import Activation, Conv2D, Dense, Flatten


def _layer_grads(layer, x, dy):
    """Run forward+backward once; returns (y, dx, {weight: grad})."""
    for s in layer._specs:
        getattr(layer, "d" + s.attr)[...] = 0
    y = np.array(layer.forward(x, True))
    dx = layer.backward(dy.copy())
    return y, np.array(dx), {s.attr: np.array(getattr(layer, "d" + s.attr)) for s in layer._specs}


@pytest.mark.parametrize("act", ["linear", "relu", "tanh", "sigmoid", "softmax"])
def test_dense_gradients(rng, act):
    layer = Dense(5, activation=act)
    layer._build((None, 7))
    layer.bias[...] = rand(rng, 5)
    x = rand(rng, 3, 7)
    dy = rand(rng, 3, 5)
    y, dx, grads = _layer_grads(layer, x, dy)
    f = lambda: float((np.array(layer.forward(x, True)).astype(np.float64) * dy).sum())
    assert_grad_close(dx, numeric_grad(f, x))
    assert_grad_close(grads["kernel"], numeric_grad(f, layer.kernel))
    assert_grad_close(grads["bias"], numeric_grad(f, layer.bias))


def test_dense_matches_numpy_on_nd_input(rng):
    layer = Dense(4, activation="relu")
    x = rand(rng, 2, 3, 6)
    y = layer(x)
    ref = np.maximum(x @ layer.kernel + layer.bias, 0)
    assert y.shape == (2, 3, 4)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("padding,strides", [("valid", 1), ("same", 1), ("same", 2), ("valid", 2)])
def test_conv2d_layer_gradients(rng, padding, strides):
    layer = Conv2D(3, (3, 2), strides=strides, padding=padding, activation="tanh")
    layer._build((None, 5, 6, 2))
    layer.bias[...] = rand(rng, 3)
    x = rand(rng, 2, 5, 6, 2)
    out_shape = layer.output_shape
    dy = rand(rng, 2, *out_shape[1:])
    y, dx, grads = _layer_grads(layer, x, dy)
    f = lambda: float((np.array(layer.forward(x, True)).astype(np.float64) * dy).sum())
    assert_grad_close(dx, numeric_grad(f, x))
    assert_grad_close(grads["kernel"], numeric_grad(f, layer.kernel))
    assert_grad_close(grads["bias"], numeric_grad(f, layer.bias))


@pytest.mark.parametrize("act", ["linear", "relu", "sigmoid", "tanh", "softmax"])
def test_conv2d_fused_activation_matches_separate_layers(rng, act):
    """Conv2D(activation=act) runs the activation inside the conv kernels (softmax excepted):
    the same outputs and gradients as a linear Conv2D followed by Activation(act), for a full
    and a smaller batch (buffer views), and need_dw=False leaves the weight gradients alone."""
    fused = Conv2D(5, 3, strides=2, padding="same", activation=act)
    plain, after = Conv2D(5, 3, strides=2, padding="same"), Activation(act)
    fused._build((None, 9, 7, 3))
    plain._build((None, 9, 7, 3))
    after._build(plain.output_shape)
    fused.bias[...] = rand(rng, 5)
    plain.set_weights(fused.get_weights())
    for n in (4, 3):
        x = rand(rng, n, 9, 7, 3)
        dy = rand(rng, n, *fused.output_shape[1:])
        y, dx, grads = _layer_grads(fused, x, dy)
        for s_ in plain._specs:
            getattr(plain, "d" + s_.attr)[...] = 0
        y2 = np.array(after.forward(plain.forward(x, True), True))
        dx2 = np.array(plain.backward(after.backward(dy.copy())))
        np.testing.assert_allclose(y, y2, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(dx, dx2, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(grads["kernel"], plain.dkernel, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(grads["bias"], plain.dbias, rtol=1e-5, atol=1e-5)

        fused.dkernel[...] = 7.0
        fused.dbias[...] = 7.0
        fused.forward(x, True)
        dx3 = np.array(fused.backward(dy.copy(), need_dw=False))
        np.testing.assert_array_equal(dx3, dx)
        assert (fused.dkernel == 7.0).all() and (fused.dbias == 7.0).all()


@pytest.mark.parametrize("h,w,k,s,padding,expect", [
    (28, 28, 3, 1, "valid", (26, 26)), (28, 28, 3, 1, "same", (28, 28)),
    (7, 9, 3, 2, "same", (4, 5)), (7, 9, 3, 2, "valid", (3, 4)), (5, 5, 5, 1, "valid", (1, 1))])
def test_conv2d_output_shape(h, w, k, s, padding, expect):
    layer = Conv2D(4, k, strides=s, padding=padding)
    assert layer._build((None, h, w, 3)) == (None, *expect, 4)


def test_flatten_and_activation_roundtrip(rng):
    x = rand(rng, 2, 3, 4, 5)
    fl = Flatten()
    fl._build((None, 3, 4, 5))
    y = fl.forward(x)
    assert y.shape == (2, 60) and np.shares_memory(y, x)
    assert fl.backward(y).shape == x.shape
    act = Activation("relu")
    np.testing.assert_array_equal(act(x), np.maximum(x, 0))


def test_keras_default_initializers():
    d = Dense(300)
    d._build((None, 200))
    limit = np.sqrt(6 / (200 + 300))
    assert np.abs(d.kernel).max() <= limit and np.abs(d.kernel).max() > 0.9 * limit
    assert (d.bias == 0).all()
    c = Conv2D(8, 3, kernel_initializer="he_normal", bias_initializer="ones")
    c._build((None, 8, 8, 4))
    assert (c.bias == 1).all() and 0.2 < c.kernel.std() < 0.35   # he_normal: sqrt(2/36) ≈ 0.236 (truncated)


def test_layer_bad_arguments():
    with pytest.raises(ValueError, match="unknown activation 'gleu'; valid names"):
        Dense(3, activation="gleu")
    with pytest.raises(ValueError, match="units"):
        Dense(0)
    with pytest.raises(ValueError, match="padding"):
        Conv2D(3, 3, padding="full")
    with pytest.raises(ValueError, match="unknown initializer"):
        Dense(3, kernel_initializer="nope")
    with pytest.raises(TypeError, match="unexpected argument"):
        Dense(3, foo=1)
    c = Conv2D(3, 5)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        c._build((None, 3, 3, 1))


@pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed")
def test_dense_and_conv2d_torch_parity(rng):
    import torch
    # Dense
    d = Dense(6, activation="relu")
    d._build((None, 11))
    d.bias[...] = rand(rng, 6)
    x = rand(rng, 5, 11)
    dy = rand(rng, 5, 6)
    y, dx, g = _layer_grads(d, x, dy)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(d.kernel.T.copy(), requires_grad=True)
    tb = torch.tensor(d.bias.copy(), requires_grad=True)
    ty = torch.relu(torch.nn.functional.linear(tx, tw, tb))
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g["kernel"], tw.grad.numpy().T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g["bias"], tb.grad.numpy(), rtol=1e-5, atol=1e-5)
    # Conv2D, 'same' with stride 2 (Keras pads the odd pixel at the bottom/right)
    c = Conv2D(4, 3, strides=2, padding="same", activation="relu")
    c._build((None, 9, 8, 3))
    c.bias[...] = rand(rng, 4)
    x = rand(rng, 2, 9, 8, 3)
    dy = rand(rng, 2, *c.output_shape[1:])
    y, dx, g = _layer_grads(c, x, dy)
    tx = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
    tw = torch.tensor(c.kernel.transpose(3, 2, 0, 1).copy(), requires_grad=True)
    tb = torch.tensor(c.bias.copy(), requires_grad=True)
    ph, pw = c._pad
    pad_b = (c.output_shape[1] - 1) * 2 + 3 - 9 - ph
    pad_r = (c.output_shape[2] - 1) * 2 + 3 - 8 - pw
    xp = torch.nn.functional.pad(tx, (pw, pad_r, ph, pad_b))
    ty = torch.relu(torch.nn.functional.conv2d(xp, tw, tb, stride=2))
    ty.backward(torch.tensor(dy.transpose(0, 3, 1, 2).copy()))
    np.testing.assert_allclose(y, ty.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, tx.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g["kernel"], tw.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g["bias"], tb.grad.numpy(), rtol=1e-5, atol=1e-5)
