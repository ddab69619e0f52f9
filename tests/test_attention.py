"""Fused scaled-dot-product attention: the kernels (kilnet._cpu, AVX-512, AVX2 and portable) against the
plain reference kernels (kilnet._cpu.ref) and PyTorch's scaled_dot_product_attention on odd
shapes, forward and backward, with causal masking, boolean masks and additive biases streamed
through broadcast strides; kilnet.ops.dot_product_attention against float64 finite differences
and Keras 3 (JAX backend); the errors; and that no Tq x Tk matrix is allocated."""
import os
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest

import kilnet
import kilnet.ops as K
from kilnet import _cpu
from kilnet.engine.tape import GradientTape
from kilnet.engine.tensor import Tensor
from conftest import avx2_and_avx512

torch = pytest.importorskip("torch")

# (B, Tq, Tk, N, Nk, H): odd lengths, Tq != Tk both ways, head dims 5 .. 80, grouped heads
SHAPES = [(1, 1, 1, 1, 1, 1), (2, 7, 7, 3, 3, 5), (1, 33, 33, 2, 2, 16), (2, 7, 33, 2, 1, 64),
          (1, 70, 29, 2, 2, 80), (1, 129, 130, 1, 1, 64), (3, 65, 64, 4, 2, 8), (1, 77, 77, 2, 2, 63)]
MASKS = ["none", "bias", "keypad", "full", "both"]


def make(rng, B, Tq, Tk, N, Nk, H):
    q = rng.standard_normal((B, Tq, N, H)).astype(np.float32)
    k = rng.standard_normal((B, Tk, Nk, H)).astype(np.float32)
    v = rng.standard_normal((B, Tk, Nk, H)).astype(np.float32)
    return q, k, v


def masks(rng, kind, B, Tq, Tk, N):
    """(bias, mask); key 0 always attended, so no row is fully masked (torch differs there)."""
    bias = mask = None
    if kind in ("bias", "both"):
        bias = rng.standard_normal((1, N, Tq, Tk)).astype(np.float32)
    if kind == "keypad":
        mask = rng.random((B, 1, 1, Tk)) > 0.3
        mask[..., 0] = True
    if kind in ("full", "both"):
        mask = rng.random((B, 1, Tq, Tk)) > 0.4
        mask[..., 0] = True
    return bias, mask


def kernel_fwd(mod, q, k, v, bias, mask, scale, causal):
    B, Tq, N, _ = q.shape
    out, lse = np.empty_like(q), np.empty((B, N, Tq), np.float32)
    mod.attention_forward(q, k, v, bias, mask, out, lse, scale, causal)
    return out, lse


def kernel_bwd(mod, q, k, v, bias, mask, out, lse, do, scale, causal):
    dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
    mod.attention_backward(q, k, v, bias, mask, out, lse, do, dq, dk, dv, scale, causal)
    return dq, dk, dv


def torch_sdpa(q, k, v, bias, mask, scale, causal, do):
    """PyTorch on (B, N, T, H) with the combined mask as an additive -inf matrix."""
    B, Tq, N, _ = q.shape
    Tk, Nk = k.shape[1], k.shape[2]
    tq, tk, tv = (torch.tensor(a, dtype=torch.float64).transpose(1, 2).requires_grad_() for a in (q, k, v))
    tk2, tv2 = (t.repeat_interleave(N // Nk, 1) for t in (tk, tv))
    am = None
    if bias is not None or mask is not None or causal:
        allow = torch.ones(B, N, Tq, Tk, dtype=torch.bool)
        if mask is not None:
            allow = allow & torch.tensor(mask)
        if causal:
            allow = allow & torch.ones(Tq, Tk, dtype=torch.bool).tril()
        am = torch.zeros(B, N, Tq, Tk, dtype=torch.float64)
        if bias is not None:
            am = am + torch.tensor(bias, dtype=torch.float64)
        am = am.masked_fill(~allow, float("-inf"))
    o = torch.nn.functional.scaled_dot_product_attention(tq, tk2, tv2, attn_mask=am, scale=scale)
    o.backward(torch.tensor(do, dtype=torch.float64).transpose(1, 2))
    back = lambda t: t.detach().transpose(1, 2).numpy()   # noqa: E731
    return back(o), back(tq.grad), back(tk.grad), back(tv.grad)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", MASKS)
def test_kernel_vs_reference_and_torch(shape, causal, kind):
    rng = np.random.default_rng(zlib.crc32(repr((shape, causal, kind)).encode()))
    B, Tq, Tk, N, Nk, H = shape
    q, k, v = make(rng, *shape)
    bias, mask = masks(rng, kind, B, Tq, Tk, N)
    scale = 1 / np.sqrt(H)
    do = rng.standard_normal(q.shape).astype(np.float32)
    out, lse = kernel_fwd(_cpu, q, k, v, bias, mask, scale, causal)
    out_r, lse_r = kernel_fwd(_cpu.ref, q, k, v, bias, mask, scale, causal)
    np.testing.assert_allclose(out, out_r, rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(lse, lse_r, rtol=1e-5, atol=2e-6)
    grads = kernel_bwd(_cpu, q, k, v, bias, mask, out, lse, do, scale, causal)
    grads_r = kernel_bwd(_cpu.ref, q, k, v, bias, mask, out_r, lse_r, do, scale, causal)
    t_out, *t_grads = torch_sdpa(q, k, v, bias, mask, scale, causal, do)
    np.testing.assert_allclose(out, t_out, rtol=1e-5, atol=3e-6)
    for name, g, gr, gt in zip("qkv", grads, grads_r, t_grads):
        np.testing.assert_allclose(g, gr, rtol=1e-4, atol=1e-5, err_msg=f"d{name} vs reference")
        np.testing.assert_allclose(g, gt, rtol=1e-4, atol=1e-5, err_msg=f"d{name} vs torch")


def test_fully_masked_rows_follow_keras():
    """A row with no allowed key outputs mean(v) and sends gradient only to v, as Keras 3."""
    rng = np.random.default_rng(3)
    q, k, v = make(rng, 2, 9, 11, 2, 2, 7)
    mask = np.ones((2, 1, 9, 11), bool)
    mask[0, 0, 3] = False            # row 3 of batch 0: nothing allowed
    mask[1, 0, :, 0] = False          # with causality, row 0 of batch 1 has no key
    for causal in (False, True):
        out, lse = kernel_fwd(_cpu, q, k, v, None, mask, 0.3, causal)
        out_r, _ = kernel_fwd(_cpu.ref, q, k, v, None, mask, 0.3, causal)
        ref64 = K.dot_product_attention(q.astype(np.float64), k, v, mask=mask, scale=0.3, is_causal=causal)
        np.testing.assert_allclose(out, out_r, atol=2e-6)
        np.testing.assert_allclose(out, ref64.numpy(), atol=2e-6)
        np.testing.assert_allclose(out[0, 3], v[0].mean(axis=0), atol=1e-6)
        assert np.isinf(lse[0, :, 3]).all()
        do = rng.standard_normal(q.shape).astype(np.float32)
        g = kernel_bwd(_cpu, q, k, v, None, mask, out, lse, do, 0.3, causal)
        gr = kernel_bwd(_cpu.ref, q, k, v, None, mask, out_r, lse, do, 0.3, causal)
        for a, b in zip(g, gr):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        assert np.all(g[0][0, 3] == 0)


def test_threads_do_not_change_results():
    rng = np.random.default_rng(5)
    q, k, v = make(rng, 2, 130, 97, 4, 2, 24)
    do = rng.standard_normal(q.shape).astype(np.float32)
    n0 = _cpu.get_num_threads()
    res = []
    try:
        for t in (1, 2):
            _cpu.set_num_threads(t)
            out, lse = kernel_fwd(_cpu, q, k, v, None, None, 0.2, True)
            res.append((out, lse) + kernel_bwd(_cpu, q, k, v, None, None, out, lse, do, 0.2, True))
    finally:
        _cpu.set_num_threads(n0)
    for a, b in zip(*res):
        np.testing.assert_array_equal(a, b)


def test_avx2_and_avx512_paths_agree():
    """The AVX-512 tile kernels (6 x 64 register tiles, 16-lane exp) against the AVX2 ones on
    odd shapes: tails of 8 lanes in a 16-lane vector, head dims 8, 63, 64, 80, causal and not."""
    body = textwrap.dedent("""
        rng = np.random.default_rng(7)
        for i, (B, Tq, Tk, N, H, causal) in enumerate([(1, 77, 77, 2, 63, True), (2, 40, 131, 2, 80, False),
                                                       (1, 200, 200, 1, 64, True), (2, 9, 24, 3, 8, False)]):
            q = rng.standard_normal((B, Tq, N, H)).astype(np.float32)
            k = rng.standard_normal((B, Tk, N, H)).astype(np.float32)
            v = rng.standard_normal((B, Tk, N, H)).astype(np.float32)
            do = rng.standard_normal(q.shape).astype(np.float32)
            bias = rng.standard_normal((Tq, Tk)).astype(np.float32) if i % 2 else None
            o, lse = np.empty_like(q), np.empty((B, N, Tq), np.float32)
            _cpu.attention_forward(q, k, v, bias, None, o, lse, 0.125, causal)
            g = [np.empty_like(a) for a in (q, k, v)]
            _cpu.attention_backward(q, k, v, bias, None, o, lse, do, *g, 0.125, causal)
            for name, a in zip(("out", "lse", "dq", "dk", "dv"), [o, lse] + g):
                out[f"{name}{i}"] = a
    """)
    lo, hi = avx2_and_avx512(body)
    for key in lo:
        np.testing.assert_allclose(hi[key], lo[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_portable_path_matches_reference():
    """KILNET_SIMD=scalar runs the portable tile kernels (a machine without AVX2)."""
    code = textwrap.dedent("""
        import numpy as np
        from kilnet import _cpu
        assert _cpu.simd_level() == "scalar"
        rng = np.random.default_rng(0)
        q = rng.standard_normal((2, 37, 3, 20)).astype(np.float32)
        k = rng.standard_normal((2, 41, 3, 20)).astype(np.float32)
        v = rng.standard_normal((2, 41, 3, 20)).astype(np.float32)
        bias = rng.standard_normal((37, 41)).astype(np.float32)
        do = rng.standard_normal(q.shape).astype(np.float32)
        for mod in (_cpu, _cpu.ref):
            out, lse = np.empty_like(q), np.empty((2, 3, 37), np.float32)
            mod.attention_forward(q, k, v, bias, None, out, lse, 0.25, True)
            g = [np.empty_like(a) for a in (q, k, v)]
            mod.attention_backward(q, k, v, bias, None, out, lse, do, *g, 0.25, True)
            if mod is _cpu:
                mine = [out, lse] + g
        for a, b in zip(mine, [out, lse] + g):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        print("ok")
    """)
    env = dict(os.environ, KILNET_SIMD="scalar")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


# ---------------------------------------------------------------- the op, on the tape

def op_grads(q, k, v, bias=None, mask=None, scale=None, causal=False, do=None, bias_grad=False):
    ts = [Tensor(a.copy()) for a in (q, k, v)]
    bt = Tensor(bias.copy()) if bias is not None else None
    with GradientTape() as tape:
        tape.watch(ts + ([bt] if bias_grad else []))
        y = K.dot_product_attention(*ts, bias=bt, mask=mask, scale=scale, is_causal=causal)
    srcs = ts + ([bt] if bias_grad else [])
    grads = tape.gradient(y, srcs, output_gradients=do)
    return y.numpy(), [g.numpy() if hasattr(g, "numpy") else np.asarray(g) for g in grads]


@pytest.mark.parametrize("causal", [False, True])
def test_op_float32_kernel_vs_torch(causal):
    rng = np.random.default_rng(11)
    B, Tq, Tk, N, Nk, H = 2, 19, 23, 4, 2, 12
    q, k, v = make(rng, B, Tq, Tk, N, Nk, H)
    bias, mask = masks(rng, "both", B, Tq, Tk, N)
    do = rng.standard_normal(q.shape).astype(np.float32)
    y, (dq, dk, dv) = op_grads(q, k, v, bias, mask, None, causal, do)
    assert y.dtype == np.float32 and dq.dtype == np.float32
    t_out, tdq, tdk, tdv = torch_sdpa(q, k, v, bias, mask, 1 / np.sqrt(H), causal, do)
    np.testing.assert_allclose(y, t_out, rtol=1e-5, atol=3e-6)
    for a, b in ((dq, tdq), (dk, tdk), (dv, tdv)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_op_bias_gradient_vs_torch():
    rng = np.random.default_rng(12)
    B, Tq, Tk, N, H = 2, 6, 9, 3, 5
    q, k, v = make(rng, B, Tq, Tk, N, N, H)
    bias = rng.standard_normal((N, 1, Tk)).astype(np.float32)     # broadcast over batch and queries
    do = rng.standard_normal(q.shape).astype(np.float32)
    y, (dq, dk, dv, db) = op_grads(q, k, v, bias, None, 0.5, True, do, bias_grad=True)
    tq, tk, tv = (torch.tensor(a).transpose(1, 2).requires_grad_() for a in (q, k, v))
    tb = torch.tensor(bias, requires_grad=True)
    am = tb.expand(B, N, Tq, Tk).masked_fill(~torch.ones(Tq, Tk, dtype=torch.bool).tril(), float("-inf"))
    o = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=am, scale=0.5)
    o.backward(torch.tensor(do).transpose(1, 2))
    np.testing.assert_allclose(y, o.detach().transpose(1, 2).numpy(), rtol=1e-5, atol=3e-6)
    np.testing.assert_allclose(db, tb.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dq, tq.grad.transpose(1, 2).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("causal,kind,gqa", [(False, "none", False), (True, "both", False), (True, "keypad", True)])
def test_op_float64_finite_differences(causal, kind, gqa):
    rng = np.random.default_rng(21)
    B, Tq, Tk, N, H = 2, 4, 5, 2, 3
    Nk = 1 if gqa else N
    q, k, v = (a.astype(np.float64) for a in make(rng, B, Tq, Tk, N, Nk, H))
    bias, mask = masks(rng, kind, B, Tq, Tk, N)
    if bias is not None:
        bias = bias.astype(np.float64)
    do = rng.standard_normal(q.shape)
    arrays = [q, k, v] + ([bias] if bias is not None else [])
    y, grads = op_grads(q, k, v, bias, mask, 0.7, causal, do, bias_grad=bias is not None)
    assert y.dtype == np.float64

    def loss(vals):
        b = vals[3] if bias is not None else None
        return float(np.sum(K.dot_product_attention(*vals[:3], bias=b, mask=mask, scale=0.7,
                                                    is_causal=causal).numpy() * do))
    eps = 1e-6
    for i, a in enumerate(arrays):
        num = np.zeros(a.shape)
        for j in range(a.size):
            vals = [x.copy() for x in arrays]
            vals[i].reshape(-1)[j] += eps
            fp = loss(vals)
            vals[i].reshape(-1)[j] -= 2 * eps
            num.reshape(-1)[j] = (fp - loss(vals)) / (2 * eps)
        np.testing.assert_allclose(grads[i], num, rtol=1e-5, atol=1e-7, err_msg=f"input {i}")
    # the float64 path and the float32 kernel agree
    y32, g32 = op_grads(*(a.astype(np.float32) for a in (q, k, v)), None if bias is None else bias.astype(np.float32),
                        mask, 0.7, causal, do.astype(np.float32))
    np.testing.assert_allclose(y32, y, rtol=1e-4, atol=1e-5)
    for a, b in zip(g32, grads[:3]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_op_matches_keras_jax():
    """Keras 3 (JAX backend) on the same inputs: causal with Tq != Tk both ways, a mask with a
    fully masked row, a bias, grouped heads."""
    pytest.importorskip("jax")
    rng = np.random.default_rng(31)
    cases = []
    for (Tq, Tk, causal) in ((5, 8, True), (8, 5, True), (6, 6, False)):
        q, k, v = make(rng, 2, Tq, Tk, 4, 2, 8)
        mask = rng.random((2, 1, Tq, Tk)) > 0.3
        mask[1, 0, 2] = False
        bias = rng.standard_normal((4, Tq, Tk)).astype(np.float32)
        cases.append((q, k, v, bias, mask, causal))
    path = os.path.join(os.environ.get("PYTEST_TMPDIR", "/tmp"), f"kilnet_attn_{os.getpid()}.npz")
    np.savez(path, **{f"{n}{i}": a for i, c in enumerate(cases) for n, a in zip("qkvbm", c[:5])})
    code = textwrap.dedent(f"""
        import os; os.environ["KERAS_BACKEND"] = "jax"
        import numpy as np, keras
        d = np.load({path!r})
        for i, causal in enumerate({[c[5] for c in cases]!r}):
            o = keras.ops.dot_product_attention(d[f"q{{i}}"], d[f"k{{i}}"], d[f"v{{i}}"], bias=d[f"b{{i}}"],
                                                mask=d[f"m{{i}}"], is_causal=causal)
            np.save({path!r} + f".out{{i}}.npy", np.asarray(o))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
    if r.returncode != 0 and "No module named" in r.stderr:
        pytest.skip(f"Keras with JAX not importable: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr
    try:
        for i, (q, k, v, bias, mask, causal) in enumerate(cases):
            want = np.load(path + f".out{i}.npy")
            got = K.dot_product_attention(q, k, v, bias=bias, mask=mask, is_causal=causal).numpy()
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"case {i}")
    finally:
        for f in [path] + [path + f".out{i}.npy" for i in range(len(cases))]:
            if os.path.exists(f):
                os.remove(f)


def test_op_on_keras_tensors():
    x = kilnet.Input((7, 2, 8))
    y = K.dot_product_attention(x, x, x, is_causal=True)
    assert tuple(y.shape) == (None, 7, 2, 8)


# ---------------------------------------------------------------- errors

def test_op_errors_name_the_problem():
    rng = np.random.default_rng(0)
    q, k, v = make(rng, 2, 5, 6, 2, 2, 4)
    with pytest.raises(ValueError, match="head dims differ"):
        K.dot_product_attention(q, k[..., :3], v[..., :3])
    with pytest.raises(ValueError, match="4-D"):
        K.dot_product_attention(q[0], k[0], v[0])
    with pytest.raises(ValueError, match="value must have the shape of key"):
        K.dot_product_attention(q, k, v[:, :5])
    with pytest.raises(ValueError, match="batch sizes differ"):
        K.dot_product_attention(q, k[:1], v[:1])
    with pytest.raises(ValueError, match="multiple of key/value heads"):
        K.dot_product_attention(np.zeros((2, 5, 3, 4), np.float32), k, v)
    with pytest.raises(ValueError, match=r"mask of shape \(2, 6\) is not broadcastable"):
        K.dot_product_attention(q, k, v, mask=np.ones((2, 6), bool))
    with pytest.raises(ValueError, match="bias of shape"):
        K.dot_product_attention(q, k, v, bias=np.zeros((2, 2, 5, 7), np.float32))
    with pytest.raises(TypeError, match="mask must be boolean"):
        K.dot_product_attention(q, k, v, mask=np.ones((6,), np.float32))
    with pytest.raises(TypeError, match="real floating"):
        K.dot_product_attention(q.astype(np.complex64), k, v)
    with pytest.raises(ValueError, match="scale must be"):
        K.dot_product_attention(q, k, v, scale=float("nan"))
    with pytest.raises(ValueError, match="attn_logits_soft_cap"):
        K.dot_product_attention(q, k, v, attn_logits_soft_cap=5.0)


def test_kernel_argument_errors():
    rng = np.random.default_rng(0)
    q, k, v = make(rng, 2, 5, 6, 2, 2, 4)
    out, lse = np.empty_like(q), np.empty((2, 2, 5), np.float32)
    f = _cpu.attention_forward
    with pytest.raises(TypeError, match="'query' must have dtype float32"):
        f(q.astype(np.float64), k, v, None, None, out, lse, 0.5, False)
    with pytest.raises(ValueError, match="C-contiguous"):
        f(q, np.asfortranarray(k), v, None, None, out, lse, 0.5, False)
    with pytest.raises(ValueError, match="'lse' must have shape"):
        f(q, k, v, None, None, out, np.empty((2, 5, 2), np.float32), 0.5, False)
    with pytest.raises(TypeError, match="'mask' must have dtype bool"):
        f(q, k, v, None, np.ones((6,), np.int64), out, lse, 0.5, False)
    with pytest.raises(ValueError, match="not broadcastable"):
        f(q, k, v, np.zeros((3, 6), np.float32), None, out, lse, 0.5, False)
    with pytest.raises(ValueError, match="overlaps input 'query'"):
        f(q, k, v, None, None, q, lse, 0.5, False)
    with pytest.raises(ValueError, match="empty"):
        f(q[:, :0], k, v, None, None, out[:, :0], lse[:, :, :0], 0.5, False)
    dq = np.empty_like(q)
    with pytest.raises(ValueError, match="'dk' must have shape"):
        _cpu.attention_backward(q, k, v, None, None, out, lse, q, dq, np.empty_like(q), np.empty_like(v), 0.5, False)


# ---------------------------------------------------------------- memory: linear in T

def test_no_quadratic_allocation():
    """T = 4096, one head: the score matrix alone would be 64 MiB. The op (numpy side, traced
    by tracemalloc) and the kernel (C++ side, seen in the process's peak RSS) stay far below."""
    code = textwrap.dedent("""
        import resource, tracemalloc, numpy as np
        import kilnet.ops as K
        from kilnet.engine.tape import GradientTape
        from kilnet.engine.tensor import Tensor
        T, H = 4096, 32
        rng = np.random.default_rng(0)
        ts = [Tensor(rng.standard_normal((1, T, 1, H)).astype(np.float32)) for _ in range(3)]
        do = rng.standard_normal((1, T, 1, H)).astype(np.float32)
        with GradientTape() as tape:
            tape.watch(ts)
            y = K.dot_product_attention(ts[0], ts[1], ts[2], is_causal=True)   # warm-up
        tape.gradient(y, ts, output_gradients=do)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tracemalloc.start()
        with GradientTape() as tape:
            tape.watch(ts)
            y = K.dot_product_attention(ts[0], ts[1], ts[2])
        g = tape.gradient(y, ts, output_gradients=do)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
        print(peak, grown * 1024)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    peak, grown = map(int, r.stdout.split())
    scores = 4096 * 4096 * 4
    assert peak < scores // 16, f"numpy side allocated {peak} bytes at T=4096"
    assert grown < scores // 8, f"peak RSS grew by {grown} bytes at T=4096"
