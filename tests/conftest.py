"""Shared test helpers: seeded random arrays, the finite-difference gradient check, and
device parametrization (GPU tests skip without kilnet._cuda and a GPU)."""
import importlib.util

import numpy as np
import pytest

HAVE_TORCH = importlib.util.find_spec("torch") is not None


def pytest_collection_modifyitems(config, items):
    from kilnet.backend import cuda_available
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs kilnet._cuda and a GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def rand(rng, *shape, lo=-1.0, hi=1.0):
    return rng.uniform(lo, hi, size=shape).astype(np.float32)


def numeric_grad(f, x, eps=1e-3):
    """Central finite differences of the scalar f() with respect to x (float32 array, perturbed
    in place, in float64 arithmetic of the result)."""
    g = np.zeros(x.shape, dtype=np.float64)
    flat = x.reshape(-1)
    gf = g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = float(f())
        flat[i] = old - eps
        fm = float(f())
        flat[i] = old
        gf[i] = (fp - fm) / (2 * eps)
    return g


def assert_grad_close(analytic, numeric, rtol=2e-2, atol=2e-3):
    """Gradients from float32 kernels vs finite differences: compare with a tolerance scaled to
    the gradient's magnitude."""
    analytic = np.asarray(analytic, dtype=np.float64)
    scale = max(1.0, float(np.abs(numeric).max()))
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol * scale)


class _Gpu:
    """What a CUDA test needs: cupy, kilnet._cuda, and host<->device copies."""

    def __init__(self):
        import cupy
        from kilnet import _cuda
        self.cp, self.k = cupy, _cuda

    def dev(self, a):
        """numpy -> a new CuPy array (None stays None)."""
        return None if a is None else self.cp.asarray(a)

    def host(self, a):
        """CuPy -> numpy, after the kernels on the current stream finished."""
        return None if a is None else self.cp.asnumpy(a)

    def poisoned(self, shape, dtype=np.float32):
        """A device array filled with NaN, so an element a kernel forgot to write shows up."""
        return self.cp.full(shape, np.nan, dtype=dtype)


@pytest.fixture
def gpu():
    """For tests marked `cuda` (skipped without a GPU): cupy, kilnet._cuda and copies."""
    return _Gpu()
