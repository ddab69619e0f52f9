"""CUDA fused attention (kilnet._cuda) against the CPU kernels (kilnet._cpu and its reference):
forward (out and lse) and backward (dq, dk, dv) on odd shapes, causal or not, with streamed
bias and boolean masks, grouped heads, rows with no allowed key; kilnet.ops on CuPy arrays on
the tape; the errors of the CUDA binding. Outputs start as NaN so an unwritten element fails.
No atomics: two runs give the same bits. Skipped without kilnet._cuda and a GPU."""
import numpy as np
import pytest

from kilnet import _cpu

pytestmark = pytest.mark.cuda

SHAPES = [(1, 1, 1, 1, 1, 1), (2, 7, 7, 3, 3, 5), (1, 33, 33, 2, 2, 16), (2, 7, 33, 2, 1, 64),
          (1, 70, 29, 2, 2, 80), (1, 129, 130, 1, 1, 64), (3, 65, 64, 4, 2, 8), (1, 40, 50, 2, 2, 200)]


def problem(shape, kind, seed):
    B, Tq, Tk, N, Nk, H = shape
    r = np.random.default_rng(seed)
    q = r.standard_normal((B, Tq, N, H)).astype(np.float32)
    k = r.standard_normal((B, Tk, Nk, H)).astype(np.float32)
    v = r.standard_normal((B, Tk, Nk, H)).astype(np.float32)
    do = r.standard_normal((B, Tq, N, H)).astype(np.float32)
    bias = r.standard_normal((N, Tq, Tk)).astype(np.float32) if kind in ("bias", "both") else None
    mask = None
    if kind == "keypad":
        mask = r.random((B, 1, 1, Tk)) > 0.3
    elif kind in ("full", "both"):
        mask = r.random((B, 1, Tq, Tk)) > 0.4
        mask[0, 0, Tq // 2] = False          # a row with no allowed key
    return q, k, v, do, bias, mask


def run(mod, xp, q, k, v, do, bias, mask, scale, causal):
    q, k, v, do = (xp.asarray(a) for a in (q, k, v, do))
    bias = None if bias is None else xp.asarray(bias)
    mask = None if mask is None else xp.asarray(mask)
    B, Tq, N, _ = q.shape
    out = xp.full(q.shape, np.nan, np.float32)
    lse = xp.full((B, N, Tq), np.nan, np.float32)
    mod.attention_forward(q, k, v, bias, mask, out, lse, scale, causal)
    dq, dk, dv = (xp.full(a.shape, np.nan, np.float32) for a in (q, k, v))
    mod.attention_backward(q, k, v, bias, mask, out, lse, do, dq, dk, dv, scale, causal)
    get = (lambda a: a.get()) if xp is not np else (lambda a: a)
    return [get(a) for a in (out, lse, dq, dk, dv)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", ["none", "bias", "keypad", "full", "both"])
def test_cuda_matches_cpu(shape, causal, kind):
    cupy = pytest.importorskip("cupy")
    from kilnet import _cuda
    q, k, v, do, bias, mask = problem(shape, kind, 7)
    scale = 1 / np.sqrt(shape[-1])
    want = run(_cpu, np, q, k, v, do, bias, mask, scale, causal)
    want_ref = run(_cpu.ref, np, q, k, v, do, bias, mask, scale, causal)
    got = run(_cuda, cupy, q, k, v, do, bias, mask, scale, causal)
    again = run(_cuda, cupy, q, k, v, do, bias, mask, scale, causal)
    for name, g, w, wr, a in zip(("out", "lse", "dq", "dk", "dv"), got, want, want_ref, again):
        assert not np.isnan(g).any(), f"{name}: unwritten elements"
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=2e-5, err_msg=f"{name} vs CPU kernel")
        np.testing.assert_allclose(g, wr, rtol=1e-4, atol=2e-5, err_msg=f"{name} vs CPU reference")
        np.testing.assert_array_equal(g, a, err_msg=f"{name}: two runs differ")


def test_cuda_op_on_the_tape():
    cupy = pytest.importorskip("cupy")
    import kilnet.ops as K
    from kilnet.engine.tape import GradientTape
    from kilnet.engine.tensor import Tensor
    q, k, v, do, bias, mask = problem((2, 9, 11, 4, 2, 16), "keypad", 3)
    grads = {}
    for xp in (np, cupy):
        ts = [Tensor(xp.asarray(a)) for a in (q, k, v)]
        with GradientTape() as tape:
            tape.watch(ts)
            y = K.dot_product_attention(*ts, mask=xp.asarray(mask), is_causal=True)
        g = tape.gradient(y, ts, output_gradients=xp.asarray(do))
        grads[xp.__name__] = [cupy.asnumpy(a.value if hasattr(a, "value") else a) for a in [y] + list(g)]
    for a, b in zip(grads["cupy"], grads["numpy"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)


def test_cuda_argument_errors():
    cupy = pytest.importorskip("cupy")
    from kilnet import _cuda
    q = cupy.zeros((1, 4, 2, 8), np.float32)
    k = cupy.zeros((1, 5, 2, 8), np.float32)
    out, lse = cupy.empty_like(q), cupy.empty((1, 2, 4), np.float32)
    with pytest.raises(TypeError, match="numpy"):
        _cuda.attention_forward(q.get(), k, k, None, None, out, lse, 1.0, False)
    with pytest.raises(TypeError, match="'mask' must have dtype bool"):
        _cuda.attention_forward(q, k, k, None, cupy.ones((5,), np.float32), out, lse, 1.0, False)
    with pytest.raises(ValueError, match="not broadcastable"):
        _cuda.attention_forward(q, k, k, None, cupy.ones((3, 5), bool), out, lse, 1.0, False)
    big = cupy.zeros((1, 4, 1, 300), np.float32)
    with pytest.raises(ValueError, match="head dims up to 256"):
        _cuda.attention_forward(big, big, big, None, None, cupy.empty_like(big), cupy.empty((1, 1, 4), np.float32),
                                1.0, False)
