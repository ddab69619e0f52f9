"""Shared test helpers: seeded random arrays, the finite-difference gradient check, and
device parametrization (GPU tests skip without kilnet._cuda and a GPU)."""
import contextlib
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


# Kernel results at two SIMD levels, for the tests that compare the AVX-512 kernels with the AVX2
# ones (test_gelu, test_layernorm, test_loss, test_optim).
def at_simd_level(level, body):
    """Runs `body` (Python that fills the dict `out` with arrays) in a child process at SIMD
    level `level` (KILNET_SIMD is read once per process); its arrays, or None when the machine
    lacks the level."""
    import os
    import subprocess
    import sys
    import tempfile
    code = ("import sys\nimport numpy as np\nfrom kilnet import _cpu\nout = {}\n" + body +
            "\nnp.savez(sys.argv[1], level=np.array(_cpu.simd_level()), **out)\nprint('ok')\n")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "r.npz")
        res = subprocess.run([sys.executable, "-c", code, path], env=dict(os.environ, KILNET_SIMD=level),
                             capture_output=True, text=True, timeout=180)
        assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]
        with np.load(path) as z:
            r = {k: z[k] for k in z.files}
    return r if str(r.pop("level")) == level else None


def avx2_and_avx512(body):
    hi = at_simd_level("avx512", body)
    if hi is None:
        pytest.skip("no AVX-512 on this machine")
    lo = at_simd_level("avx2", body)
    assert lo is not None and lo.keys() == hi.keys()
    return lo, hi


@contextlib.contextmanager
def cpu_threads(n):
    """kilnet's CPU kernels on n threads inside the block, the previous count after it."""
    from kilnet import _cpu
    old = _cpu.get_num_threads()
    _cpu.set_num_threads(n)
    try:
        yield
    finally:
        _cpu.set_num_threads(old)


def streaming_case(rng, n):
    """x (spread over an activation's interesting range) and dy for an elementwise kernel."""
    return (rng.standard_normal(n) * 3).astype(np.float32), rng.standard_normal(n).astype(np.float32)


def views_at(shape, offsets):
    """float32 arrays of `shape` inside one buffer, the k-th at byte offset offsets[k] modulo 2 MiB
    from a 2 MiB boundary (their bytes do not overlap)."""
    n = int(np.prod(shape)) * 4
    span = (n // (1 << 21) + 2) << 21
    buf = np.zeros(span * len(offsets) + (1 << 21), np.uint8)
    base = (-buf.ctypes.data) % (1 << 21)
    return [buf[base + k * span + o: base + k * span + o + n].view(np.float32).reshape(shape)
            for k, o in enumerate(offsets)]
