"""conv2d_backward_input (the input gradient alone, Conv2DTranspose's forward) against the
reference loops and conv2d_backward's dx, on odd shapes and every path; Conv2DTranspose's
gradients against finite differences; bad input refused by name."""
import os
import subprocess
import sys

import numpy as np
import pytest

import kilnet
from conftest import assert_grad_close, numeric_grad, rand
from kilnet import _cpu, layers

CASES = [  # N, H, W, C, K, R, S, stride, pad, dil, P, Q
    (2, 7, 9, 5, 6, 3, 3, (1, 1), (1, 1), (1, 1), 7, 9),
    (3, 8, 7, 3, 17, 3, 2, (2, 2), (0, 1), (1, 1), 3, 4),
    (1, 11, 10, 13, 4, 2, 3, (1, 1), (1, 2), (2, 2), 10, 10),
    (5, 5, 5, 1, 8, 5, 5, (1, 1), (2, 2), (1, 1), 5, 5),
    (2, 9, 9, 40, 33, 3, 3, (2, 2), (1, 1), (1, 1), 5, 5),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("act", ["linear", "relu", "tanh"])
@pytest.mark.parametrize("threads", [1, 2])
def test_input_gradient_matches_reference_and_full_backward(case, act, threads, rng):
    N, H, W, C, K, R, S, stride, pad, dil, P, Q = case
    w, dy = rand(rng, R, S, C, K), rand(rng, N, P, Q, K)
    y = rand(rng, N, P, Q, K) if act != "linear" else None
    if act == "relu":
        y = np.maximum(y, 0)
    args = (stride, pad, dil, act, y)
    old = _cpu.get_num_threads()
    _cpu.set_num_threads(threads)
    try:
        dx = np.empty((N, H, W, C), np.float32)
        _cpu.conv2d_backward_input(dy, w, dx, *args)
        dx_full = np.empty_like(dx)
        _cpu.conv2d_backward(dy, rand(rng, N, H, W, C), w, dx_full, np.zeros_like(w), None, stride, pad, dil, act, y)
    finally:
        _cpu.set_num_threads(old)
    dx_ref = np.empty_like(dx)
    _cpu.ref.conv2d_backward_input(dy, w, dx_ref, *args)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, dx_full, rtol=1e-5, atol=1e-5)


def test_general_path_matches_reference(rng):
    """KILNET_CONV_PATH=gemm (the im2col+gemm path of machines without AVX2), in a subprocess."""
    code = ("import numpy as np; from kilnet import _cpu; r = np.random.default_rng(0); "
            "w = r.uniform(-1, 1, (3, 2, 5, 7)).astype(np.float32); dy = r.uniform(-1, 1, (2, 4, 5, 7)).astype(np.float32); "
            "a = np.empty((2, 9, 6, 5), np.float32); b = np.empty_like(a); "
            "_cpu.conv2d_backward_input(dy, w, a, (2, 1), (1, 0), (1, 1)); "
            "_cpu.ref.conv2d_backward_input(dy, w, b, (2, 1), (1, 0), (1, 1)); "
            "assert np.allclose(a, b, rtol=1e-4, atol=1e-4), abs(a - b).max(); print('ok')")
    env = {**os.environ, "KILNET_CONV_PATH": "gemm"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


def test_bad_input_is_refused(rng):
    w, dy = rand(rng, 3, 3, 4, 5), rand(rng, 2, 4, 4, 5)
    with pytest.raises(ValueError, match="input channels"):
        _cpu.conv2d_backward_input(dy, w, np.empty((2, 6, 6, 3), np.float32))
    with pytest.raises(ValueError, match="output must have shape"):
        _cpu.conv2d_backward_input(dy, w, np.empty((2, 3, 3, 4), np.float32))
    with pytest.raises(ValueError, match="needs 'y'"):
        _cpu.conv2d_backward_input(dy, w, np.empty((2, 6, 6, 4), np.float32), act="relu")
    with pytest.raises(TypeError):
        _cpu.conv2d_backward_input(dy.astype(np.float64), w, np.empty((2, 6, 6, 4), np.float32))


@pytest.mark.parametrize("kw", [dict(kernel_size=3, strides=2, padding="same"), dict(kernel_size=(2, 3)),
                                dict(kernel_size=3, strides=(2, 1), output_padding=(1, 0))])
def test_conv2d_transpose_gradients_match_finite_differences(kw, rng):
    layer = layers.Conv2DTranspose(2, activation="tanh", **kw)
    x = rand(rng, 2, 3, 4, 2)
    y0 = layer(x).numpy()
    g = rand(rng, *y0.shape)
    xt = kilnet.Tensor(x.copy())
    with kilnet.GradientTape() as tape:
        tape.watch(xt)
        y = layer(xt)
    dx, dw, db = (a.numpy() for a in tape.gradient(y, [xt, *layer.trainable_variables],
                                                   output_gradients=kilnet.Tensor(g)))

    def loss():
        return np.sum(layer(x).numpy().astype(np.float64) * g)
    assert_grad_close(dx, numeric_grad(loss, x))
    assert_grad_close(dw, numeric_grad(loss, layer.kernel))
    assert_grad_close(db, numeric_grad(loss, layer.bias))
