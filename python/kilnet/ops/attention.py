"""dot_product_attention (keras.ops name): softmax(scale * Q K^T + bias, masked) V on (B, T, N, H)
arrays, as Keras 3.

float32 operands run on our fused kernels (kilnet._cpu / kilnet._cuda attention_forward and
attention_backward: FlashAttention-style, tiled with an online softmax, never forming the
Tq x Tk score matrix; the backward recomputes the probabilities from the saved per-row
logsumexp). Other float dtypes (float64 for finite-difference checks) run a plain xp reference
with the same semantics, which does form the scores. Semantics (Keras 3's jax/numpy backends):
  - mask: boolean, True = attend, broadcastable to (B, N, Tq, Tk) by numpy's rules (a
    key-padding mask is (B, 1, 1, Tk)); an additive mask goes in `bias`.
  - is_causal: query i attends keys j <= i (tril(ones(Tq, Tk)): top-left aligned when Tq != Tk).
  - a row with no allowed key outputs the mean of value over all keys (Keras fills masked logits
    with -0.7 * finfo.max, so such a row's softmax is uniform) and passes gradient to value only.
  - key/value may have fewer heads than query (grouped-query attention): query head n uses key
    head n // (N // Nk).
Gradients flow to query, key and value; to bias too when it needs one (then the backward runs on
the xp reference path, which forms the Tq x Tk matrices).
"""
from __future__ import annotations

import math as _math
import numbers

import numpy as np

from kilnet.backend import kernels_for
from kilnet.engine import precision
from kilnet.engine.tape import record
from kilnet.engine.tensor import Tensor, same_device, unbroadcast, value_of
from kilnet.ops._base import float_tensor, wrap

__all__ = ["dot_product_attention"]


def dot_product_attention(query, key, value, bias=None, mask=None, scale=None, is_causal=False,
                          flash_attention=None, attn_logits_soft_cap=None):
    """Scaled dot-product attention of query (B, Tq, N, H) over key and value (B, Tk, Nk, H);
    returns (B, Tq, N, H). See the module docstring for the mask, causal and bias semantics.
    `flash_attention` is accepted for Keras compatibility: float32 always runs the fused kernel."""
    if attn_logits_soft_cap is not None:
        raise ValueError("dot_product_attention: attn_logits_soft_cap is only supported by Keras's JAX backend "
                         "on TPU; pass attn_logits_soft_cap=None")
    q, k, v = (float_tensor(t) for t in (query, key, value))
    for name, t in (("query", q), ("key", k), ("value", v)):
        if t.dtype.kind != "f":
            raise TypeError(f"dot_product_attention: {name} must be a real floating tensor, got dtype {t.dtype}")
    xp = same_device(q, k, v, bias, mask)
    qv, kv, vv = q.value, k.value, v.value
    B, Tq, N, H, Tk, Nk = _check_shapes(qv.shape, kv.shape, vv.shape)
    full = (B, N, Tq, Tk)
    if scale is None:
        scale = 1.0 / _math.sqrt(H)
    elif not isinstance(scale, numbers.Real) or isinstance(scale, bool) or not _math.isfinite(scale):
        raise ValueError(f"dot_product_attention: scale must be a finite number or None, got {scale!r}")
    scale = float(scale)
    is_causal = bool(is_causal)

    dtype = np.result_type(qv.dtype, kv.dtype, vv.dtype)
    bias_t = None
    bv = None
    if bias is not None:
        bias_t = bias if isinstance(bias, Tensor) else None
        bv = value_of(bias)
        bv = xp.asarray(bv)
        if bv.dtype.kind not in "fiu":
            raise TypeError(f"dot_product_attention: bias must be a real number array (added to the logits), "
                            f"got dtype {bv.dtype}; a boolean mask goes in `mask`")
        _check_broadcast("bias", bv.shape, full)
        bv = bv.astype(dtype, copy=False)
    mv = None
    if mask is not None:
        mv = xp.asarray(value_of(mask))
        if mv.dtype.kind not in "biu":
            raise TypeError(f"dot_product_attention: mask must be boolean (True = attend), got dtype {mv.dtype}; "
                            f"an additive mask goes in `bias`")
        _check_broadcast("mask", mv.shape, full)
        mv = mv.astype(bool, copy=False)

    bias_grad = bias_t is not None and bias_t._rg
    if dtype == np.float32 and qv.size > 0 and kv.size > 0:
        qv, kv, vv = (xp.ascontiguousarray(a, dtype=np.float32) for a in (qv, kv, vv))
        bc = None if bv is None else xp.ascontiguousarray(bv)
        mc = None if mv is None else xp.ascontiguousarray(mv)
        kern = kernels_for(qv)
        fwd, bwd = _kernels(kern)
        out = xp.empty_like(qv)
        lse = xp.empty((B, N, Tq), np.float32)
        fwd(qv, kv, vv, bc, mc, out, lse, scale, is_causal)
        y = wrap(xp, out)
        if (q._rg or k._rg or v._rg) and not bias_grad:
            def bw(g, needs):
                g = xp.ascontiguousarray(g, dtype=np.float32)
                dq, dk, dv = xp.empty_like(qv), xp.empty_like(kv), xp.empty_like(vv)
                bwd(qv, kv, vv, bc, mc, out, lse, g, dq, dk, dv, scale, is_causal)
                return dq, dk, dv
            record((q, k, v), (y,), bw)
            return y
    else:
        qv, kv, vv = (a.astype(dtype, copy=False) for a in (qv, kv, vv))
        y = wrap(xp, _reference(xp, qv, kv, vv, bv, mv, scale, is_causal)[0])
    if q._rg or k._rg or v._rg or bias_grad:
        qd, kd, vd = (a.astype(dtype, copy=False) for a in (qv, kv, vv))

        def bw_ref(g, needs):
            return _reference_backward(xp, qd, kd, vd, bv, mv, scale, is_causal, g, want_bias=bias_grad)
        ins = (q, k, v, bias_t) if bias_grad else (q, k, v)
        record(ins, (y,), bw_ref)
    return y


def _kernels(kern):
    """The forward and backward kernels: inside a layer call under a bfloat16 policy (Keras
    computes attention in bfloat16 there) the CPU's bfloat16-product ones, whose products take
    bfloat16-rounded operands with float32 sums on AMX tiles or VDPBF16PS (float32 scores,
    softmax and outputs); else the float32 ones."""
    auto = precision.autocast_dtype()
    if auto is not None and precision.is_bf16(auto) and hasattr(kern, "attention_forward_bf16"):
        return kern.attention_forward_bf16, kern.attention_backward_bf16
    return kern.attention_forward, kern.attention_backward


def _check_shapes(qs, ks, vs):
    if len(qs) != 4 or len(ks) != 4 or len(vs) != 4:
        raise ValueError(f"dot_product_attention: query, key and value must be 4-D (batch, time, heads, head_dim); "
                         f"got query.shape={tuple(qs)}, key.shape={tuple(ks)}, value.shape={tuple(vs)}")
    B, Tq, N, H = qs
    if ks[3] != H:
        raise ValueError(f"dot_product_attention: query and key head dims differ: query.shape={tuple(qs)}, "
                         f"key.shape={tuple(ks)}")
    if ks[0] != B:
        raise ValueError(f"dot_product_attention: query and key batch sizes differ: query.shape={tuple(qs)}, "
                         f"key.shape={tuple(ks)}")
    if tuple(vs) != tuple(ks):
        raise ValueError(f"dot_product_attention: value must have the shape of key {tuple(ks)}, got {tuple(vs)}")
    Tk, Nk = ks[1], ks[2]
    if Nk == 0 or N % Nk != 0:
        raise ValueError(f"dot_product_attention: query heads ({N}) must be a multiple of key/value heads ({Nk})")
    return B, Tq, N, H, Tk, Nk


def _check_broadcast(name, shape, full):
    ok = len(shape) <= 4 and all(d in (1, f) for d, f in zip(reversed(shape), reversed(full)))
    if not ok:
        raise ValueError(f"dot_product_attention: {name} of shape {tuple(shape)} is not broadcastable to "
                         f"(batch, heads, query_len, key_len) = {full} (a key-padding mask is (batch, 1, 1, key_len))")


# ---- the plain path: forms the (B, N, Tq, Tk) scores, as Keras's numpy backend -----------------

def _heads(xp, a, N):
    """key/value (B, Tk, Nk, H) repeated to N heads (query head n reads key head n // (N // Nk))."""
    G = N // a.shape[2]
    return a if G == 1 else xp.repeat(a, G, axis=2)


def _allowed(xp, mask, is_causal, full):
    allow = None if mask is None else xp.broadcast_to(mask, full)
    if is_causal:
        tri = xp.tril(xp.ones(full[2:], dtype=bool))
        allow = tri if allow is None else allow & tri
    return allow


def _reference(xp, q, k, v, bias, mask, scale, is_causal):
    B, Tq, N, _ = q.shape
    Tk = k.shape[1]
    kr, vr = _heads(xp, k, N), _heads(xp, v, N)
    logits = xp.einsum("btnh,bsnh->bnts", q, kr) * q.dtype.type(scale)
    if bias is not None:
        logits = logits + bias
    allow = _allowed(xp, mask, is_causal, (B, N, Tq, Tk))
    if allow is not None:
        logits = xp.where(allow, logits, q.dtype.type(-0.7 * np.finfo(q.dtype).max))
    m = logits.max(axis=-1, keepdims=True)
    p = xp.exp(logits - m)
    p /= p.sum(axis=-1, keepdims=True)
    return xp.einsum("bnts,bsnh->btnh", p, vr), p, allow


def _group_sum(d, Nk):
    """(B, Tk, N, H) head gradients summed back onto the Nk key heads."""
    B, Tk, N, H = d.shape
    return d if N == Nk else d.reshape(B, Tk, Nk, N // Nk, H).sum(axis=3)


def _reference_backward(xp, q, k, v, bias, mask, scale, is_causal, g, want_bias):
    N, Nk = q.shape[2], k.shape[2]
    g = g.astype(q.dtype, copy=False)
    _, p, allow = _reference(xp, q, k, v, bias, mask, scale, is_causal)
    kr, vr = _heads(xp, k, N), _heads(xp, v, N)
    dp = xp.einsum("btnh,bsnh->bnts", g, vr)
    ds = p * (dp - (dp * p).sum(axis=-1, keepdims=True))
    if allow is not None:          # masked logits are constants: no gradient reaches them
        ds = xp.where(allow, ds, 0)
    dq = xp.einsum("bnts,bsnh->btnh", ds, kr) * scale
    dk = _group_sum(xp.einsum("bnts,btnh->bsnh", ds, q) * scale, Nk)
    dv = _group_sum(xp.einsum("bnts,btnh->bsnh", p, g), Nk)
    grads = [xp.ascontiguousarray(a) for a in (dq, dk, dv)]
    if want_bias:
        grads.append(xp.ascontiguousarray(unbroadcast(ds, bias.shape)).astype(bias.dtype, copy=False))
    return tuple(grads)

