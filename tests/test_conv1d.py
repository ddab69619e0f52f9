"""Conv1D: against Keras 3 (jax, same weights: output, weights, config), its gradients against
PyTorch and finite differences, the frozen-weights path, the fast kernels against the reference
ones through the (B, 1, T, C) view, and a Conv1D + BatchNormalization + GlobalAveragePooling1D
time-series classifier reaching the accuracy Keras 3 reaches on the same program."""
import inspect
import os
import subprocess
import sys

import numpy as np
import pytest

import kilnet
from conftest import HAVE_TORCH, assert_grad_close, numeric_grad
from keras_ref import needs_keras, run_keras_layers
from kilnet import _cpu, layers

# (kwargs, input shape)
CASES = [
    (dict(filters=4, kernel_size=3), (2, 11, 3)),
    (dict(filters=4, kernel_size=3, padding="same"), (2, 11, 3)),
    (dict(filters=4, kernel_size=4, padding="same", strides=2), (2, 11, 3)),
    (dict(filters=5, kernel_size=3, padding="causal"), (2, 11, 3)),
    (dict(filters=5, kernel_size=3, padding="causal", dilation_rate=2, activation="relu"), (3, 13, 2)),
    (dict(filters=3, kernel_size=5, padding="causal", strides=3), (2, 17, 4)),
    (dict(filters=6, kernel_size=2, dilation_rate=3, activation="tanh"), (2, 12, 5)),
    (dict(filters=7, kernel_size=7, padding="same", activation="gelu", use_bias=False), (2, 9, 6)),
    (dict(filters=4, kernel_size=1, activation="sigmoid"), (2, 5, 8)),
    (dict(filters=8, kernel_size=3, padding="same", activation="softmax"), (2, 6, 3)),
]


def _make(i):
    kwargs, shape = CASES[i]
    r = np.random.default_rng(i)
    x = r.standard_normal(shape).astype(np.float32)
    layer = layers.Conv1D(**kwargs)
    layer(x)
    weights = [(r.standard_normal(w.shape) * 0.5).astype(np.float32) for w in layer.get_weights()]
    layer.set_weights(weights)
    return layer, x, weights


@pytest.fixture(scope="module")
def keras_out(tmp_path_factory):
    cases = []
    for i, (kwargs, _) in enumerate(CASES):
        _, x, weights = _make(i)
        cases.append({"class_name": "Conv1D", "kwargs": kwargs, "x": x, "weights": weights})
    return run_keras_layers(str(tmp_path_factory.mktemp("keras")), cases)


@needs_keras
@pytest.mark.parametrize("i", range(len(CASES)))
def test_same_output_weights_and_config_as_keras(i, keras_out):
    layer, x, _ = _make(i)
    y = layer(x).numpy()
    expected = keras_out[0][i]
    assert y.shape == expected.shape
    assert layer.compute_output_shape((None, *x.shape[1:])) == (None, *expected.shape[1:])
    np.testing.assert_allclose(y, expected, rtol=2e-5, atol=2e-5)
    info = keras_out[1][i]
    assert [[v.name, list(v.shape)] for v in layer.variables] == info["weights"]
    ours, theirs = layer.get_config(), info["config"]
    assert set(theirs) - set(ours) <= {"dtype"}
    for key in ("filters", "kernel_size", "strides", "padding", "dilation_rate", "groups", "use_bias",
                "activation", "data_format"):
        assert ours[key] == theirs[key] or list(ours[key]) == list(theirs[key]), key


def test_output_shape_in_a_functional_model():
    inp = kilnet.Input((20, 3))
    out = layers.Conv1D(4, 3, strides=2, padding="causal")(inp)
    assert tuple(out.shape) == (None, 10, 4)
    out = layers.Conv1D(2, 5, dilation_rate=2)(out)
    assert tuple(out.shape) == (None, 2, 2)
    m = kilnet.Model(inp, out)
    assert m.predict(np.zeros((3, 20, 3), np.float32)).shape == (3, 2, 2)


def test_causal_output_depends_only_on_the_past():
    r = np.random.default_rng(0)
    layer = layers.Conv1D(3, 4, padding="causal", dilation_rate=2)
    x = r.standard_normal((1, 15, 2)).astype(np.float32)
    y = layer(x).numpy()
    x2 = x.copy()
    x2[:, 9:] = r.standard_normal((1, 6, 2))
    np.testing.assert_array_equal(layer(x2).numpy()[:, :9], y[:, :9])


# ------------------------------------------------------------------------- gradients
def _grads(layer, x, dy):
    xt = kilnet.Tensor(x.copy())
    with kilnet.GradientTape() as tape:
        tape.watch(xt)
        y = layer(xt)
    g = tape.gradient(y, [xt, *layer.trainable_variables], output_gradients=kilnet.Tensor(dy))
    return y.numpy(), [a.numpy() for a in g]


@pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed")
@pytest.mark.parametrize("kw", [dict(kernel_size=3), dict(kernel_size=4, padding="same", strides=2),
                                dict(kernel_size=3, padding="causal", dilation_rate=2),
                                dict(kernel_size=5, padding="causal", strides=3),
                                dict(kernel_size=3, padding="same", activation="relu"),
                                dict(kernel_size=3, padding="same", activation="gelu")])
def test_gradients_match_torch(kw, rng):
    import torch
    F = torch.nn.functional
    x = rng.standard_normal((3, 23, 5)).astype(np.float32)
    layer = layers.Conv1D(7, **kw)
    y0 = layer(x).numpy()
    layer.set_weights([w + rng.standard_normal(w.shape).astype(np.float32) * 0.1 for w in layer.get_weights()])
    dy = rng.standard_normal(y0.shape).astype(np.float32)
    y, (dx, dw, db) = _grads(layer, x, dy)
    w, b = layer.get_weights()
    tx = torch.from_numpy(x.transpose(0, 2, 1).copy()).requires_grad_(True)
    tw = torch.from_numpy(w.transpose(2, 1, 0).copy()).requires_grad_(True)
    tb = torch.from_numpy(b).requires_grad_(True)
    k, s, d = layer.kernel_size[0], layer.strides[0], layer.dilation_rate[0]
    left = layer._pad[1]
    right = max((y.shape[1] - 1) * s + (k - 1) * d + 1 - x.shape[1] - left, 0)
    out = F.conv1d(F.pad(tx, (left, right)), tw, tb, stride=s, dilation=d)
    if kw.get("activation") == "relu":
        out = F.relu(out)
    elif kw.get("activation") == "gelu":
        out = F.gelu(out)
    np.testing.assert_allclose(y, out.detach().numpy().transpose(0, 2, 1), rtol=1e-4, atol=1e-4)
    out.backward(torch.from_numpy(dy.transpose(0, 2, 1).copy()))
    np.testing.assert_allclose(dx, tx.grad.numpy().transpose(0, 2, 1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dw, tw.grad.numpy().transpose(2, 1, 0), rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("padding,dil,stride", [("causal", 2, 1), ("same", 1, 2), ("valid", 3, 1)])
def test_gradients_match_finite_differences(padding, dil, stride, rng):
    layer = layers.Conv1D(3, 3, padding=padding, dilation_rate=dil, strides=stride, activation="tanh")
    x = rng.uniform(-1, 1, size=(2, 9, 2)).astype(np.float32)
    y0 = layer(x).numpy()
    g = rng.uniform(-1, 1, size=y0.shape).astype(np.float32)
    _, (dx, dw, db) = _grads(layer, x, g)

    def loss():
        return np.sum(layer(x).numpy().astype(np.float64) * g)
    assert_grad_close(dx, numeric_grad(loss, x))
    assert_grad_close(dw, numeric_grad(loss, layer.kernel))
    assert_grad_close(db, numeric_grad(loss, layer.bias))


def test_frozen_layer_gives_the_same_input_gradient(rng):
    x = rng.standard_normal((2, 14, 3)).astype(np.float32)
    layer = layers.Conv1D(4, 3, padding="causal", dilation_rate=2, activation="relu")
    y0 = layer(x).numpy()
    dy = rng.standard_normal(y0.shape).astype(np.float32)
    _, (dx, _, _) = _grads(layer, x, dy)
    layer.trainable = False
    _, (dx_frozen,) = _grads(layer, x, dy)
    np.testing.assert_allclose(dx_frozen, dx, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("T,C,K,k,dil,pad", [(37, 5, 9, 3, 1, (0, 1)), (50, 17, 33, 5, 2, (0, 8)),
                                             (8, 1, 3, 7, 1, (0, 6)), (64, 40, 24, 2, 4, (0, 0))])
def test_fast_kernels_match_reference_on_the_1d_view(T, C, K, k, dil, pad, rng):
    x = rng.standard_normal((3, 1, T, C)).astype(np.float32)
    w = rng.standard_normal((1, k, C, K)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    Q = T + pad[1] - (k - 1) * dil
    args = ((1, 1), pad, (1, dil))
    outs = []
    for mod in (_cpu, _cpu.ref):
        y = np.empty((3, 1, Q, K), np.float32)
        mod.conv2d_forward(x, w, b, y, *args)
        dy = np.cos(np.arange(y.size, dtype=np.float32)).reshape(y.shape)
        dx, dw, db = np.empty_like(x), np.zeros_like(w), np.zeros_like(b)
        mod.conv2d_backward(dy, x, w, dx, dw, db, *args)
        dx2 = np.empty_like(x)
        mod.conv2d_backward_input(dy, w, dx2, *args)
        outs.append((y, dx, dw, db, dx2))
    for a, b_ in zip(*outs):
        np.testing.assert_allclose(a, b_, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(outs[0][4], outs[0][1], rtol=1e-6, atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="channels_last"):
        layers.Conv1D(2, 3, data_format="channels_first")
    with pytest.raises(ValueError, match="padding"):
        layers.Conv1D(2, 3, padding="full")
    with pytest.raises(ValueError, match="groups"):
        layers.Conv1D(2, 3, groups=2)
    with pytest.raises(ValueError, match="dilation"):
        layers.Conv1D(2, 3, strides=2, dilation_rate=2)
    with pytest.raises(ValueError, match="steps"):
        layers.Conv1D(2, 5)(np.zeros((1, 3, 2), np.float32))
    with pytest.raises(ValueError, match="batch, steps, channels"):
        layers.Conv1D(2, 3)(np.zeros((1, 3, 3, 2), np.float32))


# ------------------------------------------------------------------------- a time-series classifier
def _series(n, seed):
    """Three classes of noisy sequences (steps 48, 2 channels): a slow sine, a fast sine, and a
    step, each at a random phase/position and amplitude."""
    r = np.random.default_rng(seed)
    t = np.arange(48, dtype=np.float32)
    y = r.integers(0, 3, size=n)
    x = r.normal(0, 1.2, size=(n, 48, 2)).astype(np.float32)
    phase = r.uniform(0, 2 * np.pi, size=n)
    amp = r.uniform(0.3, 1.0, size=n)
    for i in range(n):
        if y[i] == 0:
            x[i, :, 0] += amp[i] * np.sin(2 * np.pi * t / 24 + phase[i])
        elif y[i] == 1:
            x[i, :, 0] += amp[i] * np.sin(2 * np.pi * t / 6 + phase[i])
        else:
            x[i, int(phase[i] * 6):, 1] += amp[i]
    return x, y.astype(np.int64)


def program(keras, x, y, xt, yt):
    """The same program for Keras 3 and kilnet: the module is passed in."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((48, 2)),
        keras.layers.Conv1D(16, 5, padding="causal", activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.MaxPooling1D(2),
        keras.layers.Conv1D(16, 3, padding="same", dilation_rate=2, activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(3, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, epochs=8, batch_size=32, verbose=0)
    return float(model.evaluate(xt, yt, verbose=0)[1])


_KERAS_RUN = r"""
import os, sys
os.environ["KERAS_BACKEND"] = "jax"
import numpy as np, keras
d = np.load(sys.argv[1])
{source}
print("ACC", program(keras, d["x"], d["y"], d["xt"], d["yt"]))
"""


@needs_keras
def test_time_series_classifier_reaches_keras_accuracy(tmp_path):
    x, y = _series(768, 0)
    xt, yt = _series(384, 1)
    acc = program(kilnet, x, y, xt, yt)
    np.savez(tmp_path / "d.npz", x=x, y=y, xt=xt, yt=yt)
    script = tmp_path / "k.py"
    script.write_text(_KERAS_RUN.replace("{source}", inspect.getsource(program)))
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "d.npz")], capture_output=True, text=True,
                       timeout=600, env={**os.environ, "KERAS_BACKEND": "jax"})
    assert r.returncode == 0, r.stderr[-3000:]
    keras_acc = float(r.stdout.split("ACC")[-1])
    print(f"kilnet accuracy {acc:.3f}, Keras 3 {keras_acc:.3f}")
    assert keras_acc > 0.7, keras_acc           # the task is learnable in this budget
    assert acc >= keras_acc - 0.05, (acc, keras_acc)
