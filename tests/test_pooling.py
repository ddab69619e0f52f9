"""Pooling: MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D.

Kernels: fast == ref == an independent numpy version of Keras's semantics ('valid' / 'same',
padding never a maximum and not counted in an average), odd sizes, overlapping windows; ties
send the gradient to the first maximum only (as PyTorch); NaN propagates. Layers: finite
differences, PyTorch parity (outputs and gradients, 'same' padding included), configs, bad input."""
import numpy as np
import pytest

from conftest import assert_grad_close, numeric_grad, rand
from kilnet import _cpu
from kilnet.layers import AveragePooling2D, GlobalAveragePooling2D, MaxPool2D, MaxPooling2D
from kilnet.layers.conv import conv_output_length

MODULES = [pytest.param(_cpu, id="fast"), pytest.param(_cpu.ref, id="ref")]
# (H, W, C, pool, strides, padding)
GEOMS = [(4, 4, 3, (2, 2), (2, 2), "valid"), (7, 9, 5, (2, 2), (2, 2), "valid"),
         (7, 9, 5, (2, 2), (2, 2), "same"), (7, 7, 2, (3, 3), (2, 2), "same"),
         (6, 5, 3, (3, 2), (1, 1), "valid"), (6, 5, 3, (3, 3), (1, 2), "same"),
         (5, 8, 17, (2, 3), (3, 2), "same"), (1, 1, 4, (1, 1), (1, 1), "valid"),
         (9, 3, 33, (4, 3), (2, 1), "same")]


def geometry(h, w, pool, strides, padding):
    (p, ph), (q, pw) = (conv_output_length(n, k, s, 1, padding)
                        for n, k, s in ((h, pool[0], strides[0]), (w, pool[1], strides[1])))
    return (p, q), (ph, pw)


def np_pool(x, pool, strides, pad, out, kind):
    """Plain numpy: loops over output positions, windows cut to the real input."""
    n, h, w, c = x.shape
    y = np.empty((n, *out, c), np.float64)
    for p in range(out[0]):
        for q in range(out[1]):
            h0, w0 = p * strides[0] - pad[0], q * strides[1] - pad[1]
            win = x[:, max(h0, 0):min(h0 + pool[0], h), max(w0, 0):min(w0 + pool[1], w), :].astype(np.float64)
            y[:, p, q] = win.max(axis=(1, 2)) if kind == "max" else win.mean(axis=(1, 2))
    return y


def run_pool(K, kind, x, pool, strides, pad, out, dy):
    y = np.full((x.shape[0], *out, x.shape[3]), np.nan, np.float32)
    dx = np.full(x.shape, np.nan, np.float32)
    if kind == "max":
        K.maxpool2d_forward(x, y, pool, strides, pad)
        K.maxpool2d_backward(x, dy, dx, pool, strides, pad)
    else:
        K.avgpool2d_forward(x, y, pool, strides, pad)
        K.avgpool2d_backward(dy, dx, pool, strides, pad)
    return y, dx


# ------------------------------------------------------------------ kernels: fast == ref == numpy
@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("h,w,c,pool,strides,padding", GEOMS)
def test_pool_kernels_match_numpy(rng, kind, h, w, c, pool, strides, padding):
    x = rand(rng, 3, h, w, c)
    out, pad = geometry(h, w, pool, strides, padding)
    dy = rand(rng, 3, *out, c)
    (y, dx), (yr, dxr) = (run_pool(K, kind, x, pool, strides, pad, out, dy) for K in (_cpu, _cpu.ref))
    np.testing.assert_allclose(y, np_pool(x, pool, strides, pad, out, kind), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(y, yr, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dx, dxr, rtol=1e-6, atol=1e-7)
    # the adjoint identity <dy, pool(x)> = <dx, x> holds for both (max pooling is piecewise linear)
    assert np.isclose((dy.astype(np.float64) * y).sum(), (dx.astype(np.float64) * x).sum(), rtol=1e-5, atol=1e-5)


def test_pool_kernels_independent_of_threads(rng):
    x = rand(rng, 16, 28, 28, 32)
    out, pad = geometry(28, 28, (3, 3), (2, 2), "same")
    dy = rand(rng, 16, *out, 32)
    old = _cpu.get_num_threads()
    try:
        res = []
        for nt in (1, 2, 4):
            _cpu.set_num_threads(nt)
            res.append(run_pool(_cpu, "max", x, (3, 3), (2, 2), pad, out, dy) +
                       run_pool(_cpu, "avg", x, (3, 3), (2, 2), pad, out, dy))
        for r in res[1:]:
            for a, b in zip(res[0], r):
                np.testing.assert_array_equal(a, b)
    finally:
        _cpu.set_num_threads(old)


@pytest.mark.parametrize("K", MODULES)
def test_maxpool_ties_send_gradient_to_the_first_maximum(K):
    # Constant input: every position of every window ties. Non-overlapping 2x2 windows: the
    # gradient goes to each window's top-left element only.
    x = np.ones((1, 4, 4, 2), np.float32)
    dy = np.arange(1, 9, dtype=np.float32).reshape(1, 2, 2, 2)
    y, dx = run_pool(K, "max", x, (2, 2), (2, 2), (0, 0), (2, 2), dy)
    np.testing.assert_array_equal(y, 1.0)
    expect = np.zeros_like(x)
    expect[0, ::2, ::2, :] = dy[0]
    np.testing.assert_array_equal(dx, expect)
    # A tie inside one window in scan order (row, then column): [[0, 5], [5, 1]] -> the 5 at (0, 1).
    x = np.array([[0, 5], [5, 1]], np.float32).reshape(1, 2, 2, 1)
    _, dx = run_pool(K, "max", x, (2, 2), (2, 2), (0, 0), (1, 1), np.ones((1, 1, 1, 1), np.float32))
    np.testing.assert_array_equal(dx.reshape(2, 2), [[0, 1], [0, 0]])


@pytest.mark.parametrize("K", MODULES)
def test_maxpool_nan_propagates(K):
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    x[0, 1, 0, 0] = np.nan
    y, dx = run_pool(K, "max", x, (2, 2), (2, 2), (0, 0), (2, 2), np.ones((1, 2, 2, 1), np.float32))
    assert np.isnan(y[0, 0, 0, 0]) and np.isfinite(y[0, 0, 1, 0]) and np.isfinite(y[0, 1, :, 0]).all()
    assert dx[0, 1, 0, 0] == 1 and dx[0, :2, :2].sum() == 1   # the gradient goes to the NaN


def test_maxpool_ties_match_torch():
    torch = pytest.importorskip("torch", exc_type=ImportError)
    # Small integers: many ties, in overlapping windows (stride 1) and odd sizes.
    rng = np.random.default_rng(7)
    x = rng.integers(0, 3, size=(2, 7, 6, 3)).astype(np.float32)
    dy = rand(rng, 2, 5, 4, 3)
    y, dx = run_pool(_cpu, "max", x, (3, 3), (1, 1), (0, 0), (5, 4), dy)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    yt = torch.nn.functional.max_pool2d(xt, 3, 1)
    yt.backward(torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()))
    np.testing.assert_array_equal(y, yt.detach().numpy().transpose(0, 2, 3, 1))
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("K", MODULES)
def test_global_avgpool_kernels(rng, K):
    x = rand(rng, 3, 5, 7, 9)
    y = np.empty((3, 9), np.float32)
    K.global_avgpool2d_forward(x, y)
    np.testing.assert_allclose(y, x.astype(np.float64).mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    dy = rand(rng, 3, 9)
    dx = np.empty_like(x)
    K.global_avgpool2d_backward(dy, dx)
    np.testing.assert_allclose(dx, np.broadcast_to(dy[:, None, None, :] / 35.0, x.shape), rtol=1e-6)


# ------------------------------------------------------------------ layers
def layer_grads(layer, x, dy):
    y = np.array(layer.forward(x, True))
    return y, np.array(layer.backward(dy.copy()))


@pytest.mark.parametrize("cls", [MaxPooling2D, AveragePooling2D])
@pytest.mark.parametrize("pool,strides,padding", [((2, 2), None, "valid"), ((3, 3), (2, 2), "same"),
                                                  ((2, 3), (1, 2), "same"), ((3, 2), (2, 1), "valid")])
def test_pool_layer_gradients(rng, cls, pool, strides, padding):
    layer = cls(pool, strides, padding)
    layer._build((None, 5, 7, 3))
    # distinct values (a permutation, spaced well beyond the finite-difference step): no near-ties
    x = (rng.permutation(2 * 5 * 7 * 3).reshape(2, 5, 7, 3) * 0.01).astype(np.float32)
    dy = rand(rng, 2, *layer.output_shape[1:])
    _, dx = layer_grads(layer, x, dy)
    f = lambda: float((np.array(layer.forward(x, True)).astype(np.float64) * dy).sum())
    assert_grad_close(dx, numeric_grad(f, x, eps=1e-3))


def test_global_avgpool_layer_gradients_and_keepdims(rng):
    for keepdims in (False, True):
        layer = GlobalAveragePooling2D(keepdims=keepdims)
        layer._build((None, 3, 4, 5))
        assert layer.output_shape == ((None, 1, 1, 5) if keepdims else (None, 5))
        x = rand(rng, 2, 3, 4, 5)
        dy = rand(rng, 2, *layer.output_shape[1:])
        _, dx = layer_grads(layer, x, dy)
        f = lambda: float((np.array(layer.forward(x)).astype(np.float64) * dy).sum())
        assert_grad_close(dx, numeric_grad(f, x))


def torch_pool(torch, kind, x, pool, strides, pad, out):
    """Keras-semantics pooling in torch: explicit (possibly asymmetric) padding; -inf for max,
    and for the average the window sums divided by the counts of real pixels."""
    F = torch.nn.functional
    n, c, h, w = x.shape
    bottom = max((out[0] - 1) * strides[0] + pool[0] - h - pad[0], 0)
    right = max((out[1] - 1) * strides[1] + pool[1] - w - pad[1], 0)
    widths = (pad[1], right, pad[0], bottom)
    if kind == "max":
        return F.max_pool2d(F.pad(x, widths, value=float("-inf")), pool, strides)
    sums = F.avg_pool2d(F.pad(x, widths), pool, strides, divisor_override=1)
    counts = F.avg_pool2d(F.pad(torch.ones(1, 1, h, w), widths), pool, strides, divisor_override=1)
    return sums / counts


@pytest.mark.parametrize("cls,kind", [(MaxPooling2D, "max"), (AveragePooling2D, "avg")])
@pytest.mark.parametrize("h,w,c,pool,strides,padding", GEOMS[1:7])
def test_pool_layers_match_torch(rng, cls, kind, h, w, c, pool, strides, padding):
    torch = pytest.importorskip("torch", exc_type=ImportError)
    layer = cls(pool, strides, padding)
    layer._build((None, h, w, c))
    x = rand(rng, 2, h, w, c)
    dy = rand(rng, 2, *layer.output_shape[1:])
    y, dx = layer_grads(layer, x, dy)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    yt = torch_pool(torch, kind, xt, pool, layer.strides, layer._pad, layer._pq)
    yt.backward(torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()))
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-6)


def test_global_avgpool_matches_torch(rng):
    torch = pytest.importorskip("torch", exc_type=ImportError)
    x = rand(rng, 2, 5, 6, 7)
    y = GlobalAveragePooling2D()(x)
    np.testing.assert_allclose(y, torch.from_numpy(x).mean(dim=(1, 2)).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("h,pool,stride,padding,expect", [
    (28, 2, 2, "valid", 14), (7, 2, 2, "valid", 3), (7, 2, 2, "same", 4), (5, 3, 1, "same", 5),
    (5, 3, 2, "valid", 2), (6, 3, 3, "same", 2), (2, 3, 1, "same", 2)])
def test_pool_output_shapes_are_keras(h, pool, stride, padding, expect):
    layer = MaxPooling2D(pool, stride, padding)
    assert layer._build((None, h, h + 1, 3))[1] == expect


def test_pool_configs_and_defaults():
    layer = MaxPooling2D()
    assert (layer.pool_size, layer.strides, layer.padding) == ((2, 2), (2, 2), "valid")
    assert layer.name.startswith("max_pooling2d") and MaxPool2D is MaxPooling2D
    cfg = AveragePooling2D((3, 3), strides=1, padding="same", name="ap").get_config()
    assert cfg["pool_size"] == [3, 3] and cfg["strides"] == [1, 1] and cfg["padding"] == "same"
    assert cfg["data_format"] == "channels_last"
    again = AveragePooling2D.from_config(cfg)
    assert again.get_config() == cfg
    assert GlobalAveragePooling2D.from_config(GlobalAveragePooling2D(keepdims=True, name="g").get_config()).keepdims
    with pytest.raises(ValueError, match="padding"):
        MaxPooling2D(padding="full")
    with pytest.raises(ValueError, match="channels_last"):
        MaxPooling2D(data_format="channels_first")
    with pytest.raises(ValueError, match="pool_size"):
        MaxPooling2D(pool_size=0)
    with pytest.raises(ValueError, match="smaller than the pool window"):
        MaxPooling2D(3)._build((None, 2, 5, 1))
    with pytest.raises(ValueError, match="height, width, channels"):
        MaxPooling2D()._build((None, 4, 4))


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("K", MODULES)
def test_pool_bad_input(K):
    x = np.zeros((2, 5, 5, 3), np.float32)
    y = np.zeros((2, 2, 2, 3), np.float32)
    with pytest.raises(TypeError, match="float32"):
        K.maxpool2d_forward(x.astype(np.float64), y, (2, 2), (2, 2))
    with pytest.raises(ValueError, match="4-D"):
        K.maxpool2d_forward(x[0], y, (2, 2), (2, 2))
    with pytest.raises(ValueError, match="output must have shape"):
        K.maxpool2d_forward(x, np.zeros((2, 4, 2, 3), np.float32), (2, 2), (2, 2))
    with pytest.raises(ValueError, match="output must have shape"):
        K.avgpool2d_forward(x, np.zeros((2, 2, 2, 4), np.float32), (2, 2), (2, 2))
    with pytest.raises(ValueError, match="padding"):
        K.maxpool2d_forward(x, y, (2, 2), (2, 2), (2, 0))
    with pytest.raises(ValueError, match="strides"):
        K.avgpool2d_forward(x, y, (2, 2), (0, 2))
    with pytest.raises(ValueError, match="contiguous"):
        K.maxpool2d_forward(np.zeros((2, 5, 10, 3), np.float32)[:, :, ::2], y, (2, 2), (2, 2))
    with pytest.raises(ValueError, match="overlaps"):
        K.maxpool2d_backward(x, y, x, (2, 2), (2, 2))
    with pytest.raises(ValueError, match="dx"):
        K.maxpool2d_backward(x, y, np.zeros((2, 5, 4, 3), np.float32), (2, 2), (2, 2))
    with pytest.raises(ValueError, match="read-only"):
        ro = y.copy()
        ro.flags.writeable = False
        K.avgpool2d_forward(x, ro, (2, 2), (2, 2))
    with pytest.raises(ValueError, match="empty"):
        K.maxpool2d_forward(np.zeros((0, 5, 5, 3), np.float32), np.zeros((0, 2, 2, 3), np.float32), (2, 2), (2, 2))
    with pytest.raises(ValueError, match="shape"):
        K.global_avgpool2d_forward(x, np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="shape"):
        K.global_avgpool2d_backward(np.zeros((3, 3), np.float32), x.copy())
