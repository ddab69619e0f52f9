"""MultiHeadAttention with Keras 3's arguments, weights and masking, written with kilnet.ops.

Weights (Keras 3's names, shapes and order): query/kernel (d_query, heads, key_dim),
query/bias (heads, key_dim), key/kernel (d_key, heads, key_dim), key/bias, value/kernel
(d_value, heads, value_dim), value/bias, attention_output/kernel (heads, value_dim, d_out),
attention_output/bias (d_out,). Each projection is one GEMM with its bias in the epilogue
(the engine's `linear`; the kernels viewed as 2-D matrices); the attention itself is `ops.dot_product_attention` (the fused
kernel, no T x T matrix) unless attention dropout is active in training, the scores are
asked for or value_dim differs from key_dim (the kernel takes one head size): then the
scores are computed explicitly, as Keras does.

Masks follow Keras 3: the query's, value's and key's Keras masks (`_keras_mask`, e.g. from
Embedding(mask_zero=True)), `attention_mask` (batch, T, S) and `use_causal_mask` are ANDed;
the output carries the query's mask.
"""
from __future__ import annotations

import math

import numpy as np

from kilnet import initializers
from kilnet import ops
from kilnet import regularizers as regularizers_mod
from kilnet.engine.tensor import Tensor, linear
from kilnet.layers.base import Layer
from kilnet.utils import get_rng

__all__ = ["MultiHeadAttention"]


class MultiHeadAttention(Layer):
    """`MultiHeadAttention(num_heads, key_dim, value_dim=None, dropout=0.0, use_bias=True,
    output_shape=None, ...)`; call(query, value, key=None, attention_mask=None,
    return_attention_scores=False, training=None, use_causal_mask=False)."""
    supports_masking = True   # the output carries the query's mask

    def _computes_low_natively(self) -> bool:
        # under a bfloat16 policy on the CPU the projections read the bfloat16 inputs as they
        # are and the output projection writes the bfloat16 output; the attention in between
        # runs in float32 on the projections' float32 sums
        return self.compute_dtype == "bfloat16" and self.device == "cpu"

    def __init__(self, num_heads, key_dim, value_dim=None, dropout=0.0, use_bias=True, output_shape=None,
                 attention_axes=None, flash_attention=None, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, kernel_constraint=None, bias_constraint=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        who = f"MultiHeadAttention {self.name!r}"
        self.num_heads = _positive_int(num_heads, "num_heads", who)
        self.key_dim = _positive_int(key_dim, "key_dim", who)
        self.value_dim = _positive_int(value_dim, "value_dim", who) if value_dim is not None else self.key_dim
        self.dropout = float(dropout)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{who}: dropout must be in [0, 1), got {dropout!r}")
        self.use_bias = bool(use_bias)
        if output_shape is not None and not isinstance(output_shape, (int, np.integer)):
            shape = tuple(output_shape)
            if len(shape) != 1:
                raise ValueError(f"{who}: output_shape must be an int or a 1-tuple (the output width), got {output_shape!r}")
            output_shape = shape[0]
        self._output_dim = None if output_shape is None else _positive_int(output_shape, "output_shape", who)
        if attention_axes is not None and tuple(np.atleast_1d(attention_axes)) not in ((1,), (-2,)):
            raise ValueError(f"{who}: attention_axes={attention_axes!r} is not supported; attention runs over the "
                             "sequence axis (axis 1) of (batch, steps, features) inputs")
        if kernel_constraint is not None or bias_constraint is not None or activity_regularizer is not None:
            raise ValueError(f"{who}: constraints and activity_regularizer are not supported")
        self.flash_attention = flash_attention
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers_mod.get(kernel_regularizer)
        self.bias_regularizer = regularizers_mod.get(bias_regularizer)
        self.seed = seed
        self._rng = np.random.default_rng(seed) if seed is not None else None
        self._proj = None

    # ------------------------------------------------------------------ weights
    def build(self, query_shape, value_shape=None, key_shape=None):
        """Keras builds from the three shapes; a call builds on first use (the value's width
        is known only then)."""
        if value_shape is not None:
            self._make_weights(query_shape, value_shape, key_shape or value_shape)

    def _make_weights(self, q_shape, v_shape, k_shape):
        who = f"MultiHeadAttention {self.name!r}"
        for what, s in (("query", q_shape), ("value", v_shape), ("key", k_shape)):
            if len(s) != 3 or s[-1] is None:
                raise ValueError(f"{who}: {what} must be (batch, steps, features) with known features, got shape "
                                 f"{tuple(s)}")
        h, kd, vd = self.num_heads, self.key_dim, self.value_dim
        out = self._output_dim or q_shape[-1]
        proj = {}
        for name, width, dim in (("query", q_shape[-1], kd), ("key", k_shape[-1], kd), ("value", v_shape[-1], vd)):
            w = self.add_weight(shape=(width, h, dim), initializer=self.kernel_initializer,
                                regularizer=self.kernel_regularizer, name=f"{name}/kernel")
            b = self.add_weight(shape=(h, dim), initializer=self.bias_initializer,
                                regularizer=self.bias_regularizer, name=f"{name}/bias") if self.use_bias else None
            proj[name] = (w, b)
        w = self.add_weight(shape=(h, vd, out), initializer=self.kernel_initializer,
                            regularizer=self.kernel_regularizer, name="attention_output/kernel")
        b = self.add_weight(shape=(out,), initializer=self.bias_initializer, regularizer=self.bias_regularizer,
                            name="attention_output/bias") if self.use_bias else None
        proj["attention_output"] = (w, b)
        self._proj = proj
        self._widths = (q_shape[-1], v_shape[-1], k_shape[-1])

    # ------------------------------------------------------------------ the call
    def call(self, query, value, key=None, query_mask=None, value_mask=None, key_mask=None, attention_mask=None,
             return_attention_scores=False, training=None, use_causal_mask=False):
        who = f"MultiHeadAttention {self.name!r}"
        key_given = key is not None
        mode = self._computes_low_natively() if self._low else None   # (as _call_impl took the query)
        value = self._to_input(value, mode)
        key = self._to_input(key, mode) if key_given else value
        q_mask = query_mask if query_mask is not None else query._keras_mask
        v_mask = value_mask if value_mask is not None else value._keras_mask
        k_mask = key_mask if key_mask is not None else (key._keras_mask if key_given and key is not value else None)
        if self._proj is None:
            self._make_weights(query.shape, value.shape, key.shape)
        for what, t, width in (("query", query, self._widths[0]), ("value", value, self._widths[1]),
                               ("key", key, self._widths[2])):
            if t.ndim != 3 or t.shape[-1] != width:
                raise ValueError(f"{who}: {what} of shape {t.shape} does not match the layer, built for "
                                 f"(batch, steps, {width})")
        b, tq, _ = query.shape
        if value.shape[0] != b or key.shape[0] != b:
            raise ValueError(f"{who}: query, value and key have different batch sizes "
                             f"({b}, {value.shape[0]}, {key.shape[0]})")
        if key.shape[1] != value.shape[1]:
            raise ValueError(f"{who}: key and value must have the same number of steps, got "
                             f"{key.shape[1]} and {value.shape[1]}")
        ts = value.shape[1]
        mask = _combine_masks(who, b, tq, ts, q_mask, v_mask, k_mask, attention_mask)
        q = self._project("query", query)
        k = self._project("key", key)
        v = self._project("value", value)
        scale = 1.0 / math.sqrt(self.key_dim)
        drop = self.dropout > 0 and bool(training)
        scores = None
        if not drop and not return_attention_scores and self.value_dim == self.key_dim:
            # (batch, heads, T, S) mask for the kernel; causal alone goes to its causal path
            o = ops.dot_product_attention(q, k, v, mask=None if mask is None else mask[:, None],
                                          scale=scale, is_causal=bool(use_causal_mask))
        else:
            o, scores = self._explicit_attention(q, k, v, mask, bool(use_causal_mask), scale, drop)
        w, bias = self._proj["attention_output"]
        h, vd, out = w.shape
        y = linear(ops.reshape(o, (b, tq, h * vd)), ops.reshape(w, (h * vd, out)), bias, out="low")
        if return_attention_scores:
            return y, scores
        return y

    def compute_mask(self, inputs, mask=None):
        return mask   # the query's

    def _project(self, name, x):
        """x (batch, steps, width) @ kernel viewed as (width, heads*dim), + bias: (batch, steps, heads, dim)."""
        w, bias = self._proj[name]
        width, h, dim = w.shape
        b, t, _ = x.shape
        flat_bias = None if bias is None else ops.reshape(bias, (h * dim,))
        # under a bfloat16 policy: the GEMM's float32 sums for the float32 attention kernel
        # (not rounded to bfloat16 and widened back: two passes fewer, more precise than Keras)
        y = linear(x, ops.reshape(w, (width, h * dim)), flat_bias, out="float32" if self._low else None)
        return ops.reshape(y, (b, t, h, dim))

    def _explicit_attention(self, q, k, v, mask, causal, scale, drop):
        """softmax(q k^T * scale, masked) [dropout] v with the (batch, heads, T, S) scores kept."""
        s = ops.einsum("btnh,bsnh->bnts", q, k) * scale
        tq, ts = s.shape[-2], s.shape[-1]
        full = mask[:, None] if mask is not None else None
        if causal:
            tri = np.tril(np.ones((tq, ts), bool))[None, None]
            full = tri if full is None else (full & tri)
        if full is not None:
            # Keras's masked softmax: a large negative number where masked (a fully masked row is uniform)
            s = s + np.where(full, 0.0, -1e9).astype(np.float32)
        p = ops.softmax(s, axis=-1)
        pd = p
        if drop:
            rng = self._rng or get_rng()
            keep = (rng.random(p.shape) >= self.dropout).astype(np.float32) / (1.0 - self.dropout)
            pd = p * keep
        return ops.einsum("bnts,bsnh->btnh", pd, v), p

    def get_config(self):
        ser = initializers.serialize
        return {**super().get_config(), "num_heads": self.num_heads, "key_dim": self.key_dim,
                "value_dim": self.value_dim, "dropout": self.dropout, "use_bias": self.use_bias,
                "output_shape": self._output_dim, "attention_axes": None,
                "flash_attention": self.flash_attention,
                "kernel_initializer": ser(self.kernel_initializer), "bias_initializer": ser(self.bias_initializer),
                "kernel_regularizer": regularizers_mod.serialize(self.kernel_regularizer),
                "bias_regularizer": regularizers_mod.serialize(self.bias_regularizer),
                "activity_regularizer": None, "kernel_constraint": None, "bias_constraint": None,
                "seed": self.seed}


def _combine_masks(who, b, tq, ts, q_mask, v_mask, k_mask, attention_mask):
    """Keras 3's _compute_attention_mask without the causal part: a (batch, T, S) boolean array
    or None."""
    def host(m):
        m = m.value if isinstance(m, Tensor) else m
        return m.get() if hasattr(m, "get") and not isinstance(m, np.ndarray) else np.asarray(m)

    out = None
    for what, m, shape, expand in (("query mask", q_mask, (b, tq), -1), ("value mask", v_mask, (b, ts), -2),
                                   ("key mask", k_mask, (b, ts), -2)):
        if m is None:
            continue
        m = host(m).astype(bool)
        if m.shape != shape:
            raise ValueError(f"{who}: the {what} has shape {m.shape}, expected {shape}")
        m = np.expand_dims(m, expand)
        out = m if out is None else (out & m)
    if attention_mask is not None:
        a = host(attention_mask).astype(bool)
        if a.ndim == 2:
            a = a[None]
        if a.ndim != 3 or a.shape[1:] != (tq, ts) or a.shape[0] not in (1, b):
            raise ValueError(f"{who}: attention_mask has shape {host(attention_mask).shape}, expected "
                             f"(batch, {tq}, {ts}) for {tq} query and {ts} value steps")
        out = a if out is None else (out & a)
    if out is None:
        return None
    return np.ascontiguousarray(np.broadcast_to(out, (b, tq, ts)))


def _positive_int(v, name, who):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{who}: {name} must be a positive int, got {v!r}")
    return int(v)
