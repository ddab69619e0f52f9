"""MultiHeadAttention against Keras 3 (same weights: outputs, masks, causal, attention scores)
and PyTorch (nn.MultiheadAttention: outputs and gradients), training, bad input."""
import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras3 = pytest.importorskip("keras")
torch = pytest.importorskip("torch")

import kilnet  # noqa: E402
from kilnet import layers  # noqa: E402


def _pair(heads, key_dim, q, v, **kw):
    """The same layer in Keras 3 and kilnet, kilnet given Keras's initial weights."""
    km = keras3.layers.MultiHeadAttention(heads, key_dim, **kw)
    km(q, v)
    ours = layers.MultiHeadAttention(heads, key_dim, **kw)
    ours(q, v)
    ours.set_weights([np.asarray(w) for w in km.get_weights()])
    return km, ours


def _k(t):
    return np.asarray(t.detach().cpu().numpy() if hasattr(t, "detach") else t)


@pytest.mark.parametrize("b,t,s,d,dv,heads,key_dim,value_dim", [
    (2, 5, 7, 6, 4, 3, 4, 5), (1, 1, 1, 3, 3, 1, 2, None), (3, 9, 9, 8, 8, 2, 4, None)])
def test_outputs_match_keras(b, t, s, d, dv, heads, key_dim, value_dim):
    rng = np.random.default_rng(0)
    q = rng.normal(size=(b, t, d)).astype(np.float32)
    v = rng.normal(size=(b, s, dv)).astype(np.float32)
    km, ours = _pair(heads, key_dim, q, v, value_dim=value_dim)
    assert [tuple(w.shape) for w in ours.get_weights()] == [tuple(w.shape) for w in km.get_weights()]
    np.testing.assert_allclose(ours(q, v).numpy(), _k(km(q, v)), rtol=1e-5, atol=1e-5)
    am = rng.random((b, t, s)) > 0.3
    np.testing.assert_allclose(ours(q, v, attention_mask=am).numpy(), _k(km(q, v, attention_mask=am)),
                               rtol=1e-5, atol=1e-5)
    if t == s:
        np.testing.assert_allclose(ours(q, v, use_causal_mask=True).numpy(),
                                   _k(km(q, v, use_causal_mask=True)), rtol=1e-5, atol=1e-5)
    y, sc = ours(q, v, attention_mask=am, return_attention_scores=True)
    yk, sck = km(q, v, attention_mask=am, return_attention_scores=True)
    np.testing.assert_allclose(y.numpy(), _k(yk), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sc.numpy(), _k(sck), rtol=1e-5, atol=1e-6)


def test_keras_masks_from_embedding_match_keras():
    rng = np.random.default_rng(1)
    ids = rng.integers(1, 9, (2, 6))
    ids[0, 4:] = 0
    ids[1, 2:] = 0

    def build(lib, L):
        i = lib.Input((6,), dtype="int32")
        e = L.Embedding(9, 8, mask_zero=True)(i)
        a = L.MultiHeadAttention(2, 4)(e, e)
        return lib.Model(i, a)
    km = build(keras3, keras3.layers)
    ours = build(kilnet, layers)
    ours.set_weights([np.asarray(w) for w in km.get_weights()])
    want = _k(km(ids))
    got = ours.predict(ids, verbose=0)
    # Keras leaves padded query rows as whatever they compute; compare the real steps
    real = ids != 0
    np.testing.assert_allclose(got[real], want[real], rtol=1e-5, atol=1e-5)


def test_gradients_match_torch_multihead_attention():
    rng = np.random.default_rng(2)
    b, t, e, heads = 2, 5, 8, 2
    x = rng.normal(size=(b, t, e)).astype(np.float32)
    ours = layers.MultiHeadAttention(heads, e // heads)
    ours(x, x)
    wq, bq, wk, bk, wv, bv, wo, bo = ours.get_weights()
    tm = torch.nn.MultiheadAttention(e, heads, batch_first=True)
    with torch.no_grad():
        tm.in_proj_weight.copy_(torch.tensor(np.concatenate([w.reshape(e, e).T for w in (wq, wk, wv)])))
        tm.in_proj_bias.copy_(torch.tensor(np.concatenate([bb.reshape(-1) for bb in (bq, bk, bv)])))
        tm.out_proj.weight.copy_(torch.tensor(wo.reshape(e, e).T))
        tm.out_proj.bias.copy_(torch.tensor(bo))
    causal = np.triu(np.ones((t, t), bool), 1)
    xt = torch.tensor(x, requires_grad=True)
    yt, _ = tm(xt, xt, xt, attn_mask=torch.tensor(causal), need_weights=False)
    dy = rng.normal(size=yt.shape).astype(np.float32)
    yt.backward(torch.tensor(dy))
    xk = kilnet.Tensor(x)
    with kilnet.GradientTape() as tape:
        tape.watch(xk)
        y = ours(xk, xk, use_causal_mask=True)
    gx, gq, go = tape.gradient(y, [xk, ours.trainable_variables[0], ours.trainable_variables[6]],
                               output_gradients=dy)
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gx), xt.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gq).reshape(e, e).T, tm.in_proj_weight.grad[:e].numpy(),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(go).reshape(e, e).T, tm.out_proj.weight.grad.numpy(),
                               rtol=1e-4, atol=1e-5)


def test_functional_transformer_block_trains():
    """A functional Transformer-block classifier on a token rule made here: whether token 1
    appears before token 2 (needs attention across positions). Keras 3 (JAX) on the same
    program, test accuracy after 12 / 16 epochs for seeds 0, 1, 2: 0.980 0.990 0.985 / 0.995 0.995
    1.000; kilnet (Zen 4): 0.945 0.980 0.975 / 1.000 1.000 0.995. Both still swing by up to 0.15
    between epochs 9 and 15, so where kilnet lands at 12 depends on the summation order of the
    CPU's kernels (seed 0: 0.945 with the AVX2 SGEMM kernel, 0.965 with the AVX-512 one): the
    test trains 16 epochs, where both libraries have settled."""
    rng = np.random.default_rng(3)
    n, t = 1200, 12
    ids = rng.integers(3, 20, (n, t))
    y = np.zeros(n, np.int64)
    for i in range(n):
        p1, p2 = rng.choice(t, 2, replace=False)
        ids[i, p1], ids[i, p2] = 1, 2
        y[i] = int(p1 < p2)
    class TokenAndPosition(layers.Layer):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.tok, self.pos = layers.Embedding(20, 32), layers.Embedding(t, 32)

        def call(self, x):
            return self.tok(x) + self.pos(kilnet.ops.arange(t))

    kilnet.utils.set_random_seed(0)
    inp = kilnet.Input((t,), dtype="int32")
    x = TokenAndPosition()(inp)
    h = layers.MultiHeadAttention(4, 8)(x, x)
    x = layers.LayerNormalization()(layers.Add()([x, h]))
    h = layers.Dense(64, activation="relu")(x)
    x = layers.LayerNormalization()(layers.Add()([x, layers.Dense(32)(h)]))
    x = layers.GlobalAveragePooling1D()(x)
    out = layers.Dense(2, activation="softmax")(x)
    m = kilnet.Model(inp, out)
    m.compile(optimizer=kilnet.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    h = m.fit(ids[:1000], y[:1000], epochs=16, batch_size=32, verbose=0)
    acc = m.evaluate(ids[1000:], y[1000:], verbose=0)[1]
    assert acc > 0.95, (acc, h.history["loss"][-3:])


def test_bad_input_is_a_clear_error():
    q = np.zeros((2, 4, 6), np.float32)
    m = layers.MultiHeadAttention(2, 3)
    m(q, q)
    with pytest.raises(ValueError, match="does not match the layer"):
        m(np.zeros((2, 4, 5), np.float32), q)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        m(q, q, attention_mask=np.ones((2, 3, 4), bool))
    with pytest.raises(ValueError, match="different batch sizes"):
        m(q, np.zeros((3, 4, 6), np.float32))
    with pytest.raises(ValueError, match="num_heads must be a positive int"):
        layers.MultiHeadAttention(0, 4)
    with pytest.raises(ValueError, match="key_dim must be a positive int"):
        layers.MultiHeadAttention(2, 2.5)
