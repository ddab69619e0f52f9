"""The GELU kernels (exact and tanh): fast and reference against PyTorch on odd sizes, NaN
kept, the backward against central differences of the float64 formula."""
import numpy as np
import pytest
import torch

from conftest import avx2_and_avx512

from kilnet import ops
from kilnet.backend import cpu


@pytest.mark.parametrize("approx", [False, True])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 1001, 65537])
def test_gelu_kernels_match_torch(approx, n):
    rng = np.random.default_rng(n)
    x = rng.normal(0, 3, n).astype(np.float32)
    dy = rng.normal(size=n).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.gelu(xt, approximate="tanh" if approx else "none")
    yt.backward(torch.tensor(dy))
    for k in (cpu, cpu.ref):
        y, dx = np.empty_like(x), np.empty_like(x)
        k.gelu_forward(x, y, approx)
        k.gelu_backward(x, dy, dx, approx)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=2e-6, atol=2e-6)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("approx", [False, True])
def test_gelu_edges_and_finite_differences(approx):
    x = np.array([np.nan, 0.0, -0.0, 40.0, -40.0, 1e-30, -6.0, 6.0, 0.5], np.float32)
    y = np.empty_like(x)
    cpu.gelu_forward(x, y, approx)
    assert np.isnan(y[0]) and y[3] == 40.0 and abs(y[4]) < 1e-30 and y[1] == 0.0
    # backward kernel vs central differences of the float64 formula (ops on float64 arrays)
    xs = np.linspace(-5, 5, 101)
    h = 1e-6
    fd = (ops.gelu(xs + h, approximate=approx).numpy() - ops.gelu(xs - h, approximate=approx).numpy()) / (2 * h)
    dx = np.empty(101, np.float32)
    cpu.gelu_backward(xs.astype(np.float32), np.ones(101, np.float32), dx, approx)
    np.testing.assert_allclose(dx, fd, rtol=1e-5, atol=2e-6)
    with pytest.raises((ValueError, TypeError)):
        cpu.gelu_forward(x, np.empty(3, np.float32), approx)


def test_avx2_level_matches_avx512_level():
    """The AVX-512 blocks (masked tails, reciprocal + Newton for the divisions) agree with the
    AVX2 ones, forward and backward, exact and tanh, on sizes with every tail: to a few ulp of
    1 + erf (or 1 + tanh) times |x|/2, which is what either carries (x << 0 cancels to ~0)."""
    body = """
r = np.random.default_rng(0)
for n in (1, 7, 15, 17, 33, 129, 1001):
    x = (4 * r.standard_normal(n)).astype(np.float32)
    dy = r.standard_normal(n).astype(np.float32)
    for ap in (False, True):
        y, dx = np.empty_like(x), np.empty_like(x)
        _cpu.gelu_forward(x, y, ap)
        _cpu.gelu_backward(x, dy, dx, ap)
        out[f"y_{n}_{ap}"], out[f"dx_{n}_{ap}"] = y, dx
"""
    lo, hi = avx2_and_avx512(body)
    for k in hi:
        np.testing.assert_allclose(lo[k], hi[k], rtol=2e-6, atol=4e-6, err_msg=k)
