"""depthwise2d forward/backward kernels: the fast (OpenMP) kernels against the reference loops
(kilnet._cpu.ref) on odd shapes and thread counts, against PyTorch's grouped convolution, against
finite differences, and bad input refused by name."""
import numpy as np
import pytest

from conftest import HAVE_TORCH, assert_grad_close, numeric_grad, rand
from kilnet import _cpu


def out_size(size, k, stride, dil, pad_top, extra_bottom=0):
    return (size + pad_top + extra_bottom - (k - 1) * dil - 1) // stride + 1


def run(mod, x, w, b, dy_seed, P, Q, stride, pad, dil, need_dx=True):
    N, C, M = x.shape[0], x.shape[3], w.shape[3]
    y = np.empty((N, P, Q, C * M), np.float32)
    mod.depthwise2d_forward(x, w, b, y, stride, pad, dil)
    dy = np.random.default_rng(dy_seed).uniform(-1, 1, size=y.shape).astype(np.float32)
    dx = np.empty_like(x) if need_dx else None
    dw = np.full_like(w, 0.5)          # accumulates: starts from a non-zero value on purpose
    db = np.full(C * M, 0.25, np.float32) if b is not None else None
    mod.depthwise2d_backward(dy, x, w, dx, dw, db, stride, pad, dil)
    return y, dx, dw, db


SHAPES = [  # N, H, W, C, M, R, S, stride, pad (top, left), dil, extra bottom/right
    (2, 7, 9, 5, 1, 3, 3, (1, 1), (1, 1), (1, 1), 1),
    (3, 8, 6, 3, 2, 3, 2, (2, 1), (0, 1), (1, 1), 0),
    (1, 11, 10, 7, 3, 2, 3, (1, 2), (1, 2), (2, 2), 1),
    (5, 5, 5, 1, 4, 5, 5, (1, 1), (2, 2), (1, 1), 2),
    (2, 13, 4, 33, 1, 1, 3, (3, 1), (0, 1), (1, 1), 1),
    (4, 6, 7, 16, 2, 3, 3, (2, 2), (1, 1), (1, 1), 1),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_fast_matches_reference(shape, threads, rng):
    N, H, W, C, M, R, S, stride, pad, dil, extra = shape
    P, Q = out_size(H, R, stride[0], dil[0], pad[0], extra), out_size(W, S, stride[1], dil[1], pad[1], extra)
    x, w, b = rand(rng, N, H, W, C), rand(rng, R, S, C, M), rand(rng, C * M)
    old = _cpu.get_num_threads()
    _cpu.set_num_threads(threads)
    try:
        fast = run(_cpu, x, w, b, 7, P, Q, stride, pad, dil)
    finally:
        _cpu.set_num_threads(old)
    ref = run(_cpu.ref, x, w, b, 7, P, Q, stride, pad, dil)
    for a, r in zip(fast, ref):
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-5)


def test_no_bias_and_no_dx(rng):
    x, w = rand(rng, 2, 6, 6, 4), rand(rng, 3, 3, 4, 2)
    fast = run(_cpu, x, w, None, 1, 4, 4, (1, 1), (0, 0), (1, 1), need_dx=False)
    ref = run(_cpu.ref, x, w, None, 1, 4, 4, (1, 1), (0, 0), (1, 1), need_dx=False)
    assert fast[1] is None and fast[3] is None
    np.testing.assert_allclose(fast[0], ref[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast[2], ref[2], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed")
@pytest.mark.parametrize("shape", SHAPES[:4])
def test_matches_torch(shape, rng):
    import torch
    N, H, W, C, M, R, S, stride, pad, dil, extra = shape
    P, Q = out_size(H, R, stride[0], dil[0], pad[0], extra), out_size(W, S, stride[1], dil[1], pad[1], extra)
    x, w, b = rand(rng, N, H, W, C), rand(rng, R, S, C, M), rand(rng, C * M)
    y, dx, dw, db = run(_cpu, x, w, b, 3, P, Q, stride, pad, dil)
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    tw = torch.from_numpy(w.reshape(R, S, C * M).transpose(2, 0, 1)[:, None].copy()).requires_grad_(True)
    tb = torch.from_numpy(b).requires_grad_(True)
    eh = (P - 1) * stride[0] + (R - 1) * dil[0] + 1 - H - pad[0]
    ew = (Q - 1) * stride[1] + (S - 1) * dil[1] + 1 - W - pad[1]
    txp = torch.nn.functional.pad(tx, (pad[1], max(ew, 0), pad[0], max(eh, 0)))
    ty = torch.nn.functional.conv2d(txp, tw, tb, stride=stride, dilation=dil, groups=C)[:, :, :P, :Q]
    np.testing.assert_allclose(y, ty.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    dy = np.random.default_rng(3).uniform(-1, 1, size=y.shape).astype(np.float32)
    ty.backward(torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()))
    np.testing.assert_allclose(dx, tx.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw - 0.5, tw.grad.numpy()[:, 0].transpose(1, 2, 0).reshape(w.shape), rtol=1e-4,
                               atol=1e-4)
    np.testing.assert_allclose(db - 0.25, tb.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride,dil,pad,M", [((1, 1), (1, 1), (1, 1), 1), ((2, 1), (1, 1), (1, 0), 2),
                                              ((1, 1), (2, 2), (2, 1), 3)])
def test_gradients_match_finite_differences(stride, dil, pad, M, rng):
    N, H, W, C, R, S = 2, 6, 5, 3, 3, 2
    x, w, b = rand(rng, N, H, W, C), rand(rng, R, S, C, M), rand(rng, C * M)
    P, Q = out_size(H, R, stride[0], dil[0], pad[0], pad[0]), out_size(W, S, stride[1], dil[1], pad[1], pad[1])
    g = rand(rng, N, P, Q, C * M)
    y = np.empty((N, P, Q, C * M), np.float32)

    def loss():
        _cpu.depthwise2d_forward(x, w, b, y, stride, pad, dil)
        return np.sum(y.astype(np.float64) * g)

    dx, dw, db = np.empty_like(x), np.zeros_like(w), np.zeros_like(b)
    _cpu.depthwise2d_backward(g, x, w, dx, dw, db, stride, pad, dil)
    assert_grad_close(dx, numeric_grad(loss, x))
    assert_grad_close(dw, numeric_grad(loss, w))
    assert_grad_close(db, numeric_grad(loss, b))


def test_bad_input_is_refused(rng):
    x, w, b = rand(rng, 2, 6, 6, 4), rand(rng, 3, 3, 4, 2), rand(rng, 8)
    y = np.empty((2, 4, 4, 8), np.float32)
    with pytest.raises(ValueError, match="input channels"):
        _cpu.depthwise2d_forward(x, rand(rng, 3, 3, 5, 2), None, y)
    with pytest.raises(ValueError, match="output must have shape"):
        _cpu.depthwise2d_forward(x, w, b, np.empty((2, 4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="output must have shape"):
        _cpu.depthwise2d_forward(x, w, b, np.empty((2, 9, 4, 8), np.float32))
    with pytest.raises(ValueError, match="'b'"):
        _cpu.depthwise2d_forward(x, w, rand(rng, 4), y)
    with pytest.raises(ValueError, match="strides"):
        _cpu.depthwise2d_forward(x, w, b, y, (0, 1))
    with pytest.raises(TypeError):
        _cpu.depthwise2d_forward(x.astype(np.float64), w, b, y)
    with pytest.raises(ValueError, match="alias|overlap"):
        _cpu.depthwise2d_forward(x, rand(rng, 1, 1, 4, 1), None, x)   # y is x
    with pytest.raises(ValueError, match="dw"):
        _cpu.depthwise2d_backward(y, x, w, None, np.zeros((3, 3, 4, 1), np.float32), None)
    with pytest.raises(ValueError, match="dx"):
        _cpu.depthwise2d_backward(y, x, w, np.empty((2, 6, 6, 3), np.float32), np.zeros_like(w), None)
