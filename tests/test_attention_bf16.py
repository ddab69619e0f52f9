"""The attention kernels with bfloat16 products (attention_forward_bf16 / attention_backward_bf16:
mixed precision, AMX tiles where bf16_level() is 'amx', VDPBF16PS where it is 'avx512bf16'):
against the float64 reference within bfloat16's rounding, the same results at any thread count,
the float32 kernels' exact results where the machine has neither, and chosen by
MultiHeadAttention under mixed_bfloat16 only."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

import kilnet
from kilnet import _cpu, layers
from test_attention import MASKS, kernel_bwd, kernel_fwd, make, masks

BF16 = _cpu.bf16_level() in ("amx", "avx512bf16")   # bfloat16 products

# (B, Tq, Tk, N, Nk, H): partial 16-row / 32-column tiles everywhere, Tq != Tk, grouped heads
SHAPES = [(1, 1, 1, 1, 1, 1), (2, 7, 33, 2, 1, 64), (1, 70, 29, 2, 2, 80), (3, 65, 64, 4, 2, 8),
          (1, 77, 77, 2, 2, 63), (2, 128, 128, 4, 4, 32), (1, 100, 130, 1, 1, 33)]


def kernels(q, k, v, bias, mask, scale, causal, do, bf16):
    sfx = "_bf16" if bf16 else ""

    class Mod:   # kernel_fwd / kernel_bwd call mod.attention_forward / attention_backward
        attention_forward = getattr(_cpu, "attention_forward" + sfx)
        attention_backward = getattr(_cpu, "attention_backward" + sfx)
    out, lse = kernel_fwd(Mod, q, k, v, bias, mask, scale, causal)
    return (out, lse) + kernel_bwd(Mod, q, k, v, bias, mask, out, lse, do, scale, causal)


def rel_err(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", MASKS)
def test_bf16_kernels_vs_reference(shape, causal, kind):
    rng = np.random.default_rng(zlib.crc32(repr(("bf16", shape, causal, kind)).encode()))
    B, Tq, Tk, N, Nk, H = shape
    q, k, v = make(rng, *shape)
    bias, mask = masks(rng, kind, B, Tq, Tk, N)
    scale, do = 1 / np.sqrt(H), rng.standard_normal(q.shape).astype(np.float32)
    got = kernels(q, k, v, bias, mask, scale, causal, do, bf16=True)
    f32 = kernels(q, k, v, bias, mask, scale, causal, do, bf16=False)
    out_r, lse_r = kernel_fwd(_cpu.ref, q, k, v, bias, mask, scale, causal)
    ref = (out_r, lse_r) + kernel_bwd(_cpu.ref, q, k, v, bias, mask, out_r, lse_r, do, scale, causal)
    # operands rounded to 8 significant bits (relative 2^-9 each), float32 sums. A gradient is
    # measured on the scale of all three (dq and dk are exactly 0 with one key, where rounding
    # leaves dP - D a few ulps off 0).
    grad_scale = max(np.abs(r).max() for r in ref[2:])
    for name, g, r in zip(("out", "lse", "dq", "dk", "dv"), got, ref):
        assert g.dtype == np.float32 and np.isfinite(g[np.isfinite(r)]).all()
        scale_of = np.abs(r[np.isfinite(r)]).max() if name in ("out", "lse") else grad_scale
        fin = np.isfinite(r)
        assert np.array_equal(np.isfinite(g), fin), name
        err = np.abs(g[fin] - r[fin]).max() / max(scale_of, 1e-30)
        assert err < 2.5e-2, (name, err)
    if not BF16:   # no bfloat16 products: the float32 kernels themselves
        for g, f in zip(got, f32):
            np.testing.assert_array_equal(g, f)


@pytest.mark.skipif(not BF16, reason="bfloat16 products need AMX or AVX512-BF16")
def test_bf16_kernels_round_the_operands():
    """With AMX or AVX512-BF16 the products really take bfloat16 operands: the output equals the float32 kernel's
    on bfloat16-representable inputs far more closely than on general ones, and differs from it."""
    rng = np.random.default_rng(11)
    q, k, v = make(rng, 2, 64, 64, 2, 2, 32)
    do = rng.standard_normal(q.shape).astype(np.float32)
    got = kernels(q, k, v, None, None, 0.25, True, do, bf16=True)
    f32 = kernels(q, k, v, None, None, 0.25, True, do, bf16=False)
    assert not np.array_equal(got[0], f32[0])
    assert rel_err(got[0], f32[0]) > 1e-4


def test_bf16_kernels_same_at_any_thread_count():
    rng = np.random.default_rng(5)
    q, k, v = make(rng, 2, 130, 97, 4, 2, 24)
    do = rng.standard_normal(q.shape).astype(np.float32)
    before = kilnet.get_num_threads()
    try:
        res = []
        for nt in (1, 2, 3):
            kilnet.set_num_threads(nt)
            res.append(kernels(q, k, v, None, None, 0.2, True, do, bf16=True))
    finally:
        kilnet.set_num_threads(before)
    for other in res[1:]:
        for a, b in zip(res[0], other):
            np.testing.assert_array_equal(a, b)


def test_bf16_kernels_check_their_arguments():
    q = np.zeros((1, 4, 2, 8), np.float32)
    with pytest.raises(ValueError, match="out"):
        _cpu.attention_forward_bf16(q, q, q, None, None, np.empty((1, 4, 2, 7), np.float32),
                                    np.empty((1, 2, 4), np.float32), 1.0, False)
    with pytest.raises((TypeError, ValueError), match="float32"):
        _cpu.attention_forward_bf16(q.astype(np.float64), q, q, None, None, np.empty_like(q),
                                    np.empty((1, 2, 4), np.float32), 1.0, False)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_multi_head_attention_uses_them_under_mixed_bfloat16_only(policy, monkeypatch):
    calls = []
    for name in ("attention_forward", "attention_forward_bf16", "attention_backward", "attention_backward_bf16"):
        orig = getattr(_cpu, name)
        monkeypatch.setattr(_cpu, name, lambda *a, _o=orig, _n=name, **kw: (calls.append(_n), _o(*a, **kw))[1])
    kilnet.mixed_precision.set_global_policy(policy)
    try:
        x = kilnet.Input((12, 16))
        y = layers.MultiHeadAttention(2, 8)(x, x, use_causal_mask=True)
        model = kilnet.Model(x, layers.Dense(1, dtype="float32")(y))
        model.compile(optimizer="sgd", loss="mse")
        rng = np.random.default_rng(0)
        model.train_on_batch(rng.standard_normal((3, 12, 16)).astype(np.float32),
                             rng.standard_normal((3, 12, 1)).astype(np.float32))
    finally:
        kilnet.mixed_precision.set_global_policy("float32")
    sfx = "_bf16" if policy == "mixed_bfloat16" else ""
    assert set(calls) == {"attention_forward" + sfx, "attention_backward" + sfx}
