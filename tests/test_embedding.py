"""Embedding, Keras 3 semantics: out = W[ids] for int32/int64 ids of any shape; the weight
gradient is a scatter-add that is deterministic (each row summed in token order by one thread).

Kernels: fast == ref (bit for bit: the same additions in the same order) == float64 numpy ==
torch on odd shapes, both id widths, both grouping paths (counting sort, sorted keys); the same
bits at 1..4 threads; bad ids and arrays refused by name. Layer: finite differences, Keras 3's
weight name/shape/config, integer and float inputs through __call__ and the tape, fit, .h5 round
trip, and Keras 3 reading kilnet's file and kilnet reading Keras 3's (same predictions)."""
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from conftest import assert_grad_close, numeric_grad, rand
from kilnet import _cpu, ops
from kilnet.engine.tape import GradientTape
from kilnet.engine.tensor import Tensor
from kilnet.layers import Dense, Embedding, Flatten, LayerNormalization
from kilnet.models import Sequential, load_model
from kilnet.optimizers import Adam
from kilnet.utils import set_random_seed

MODULES = [pytest.param(_cpu, id="fast"), pytest.param(_cpu.ref, id="ref")]


def np_scatter(ids, dy, V):
    out = np.zeros((V, dy.shape[-1]), np.float64)
    np.add.at(out, ids.reshape(-1), dy.reshape(-1, dy.shape[-1]).astype(np.float64))
    return out


# ------------------------------------------------------------------ kernels
@pytest.mark.parametrize("K", MODULES)
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("ids_shape,V,D", [((3, 5, 7), 13, 5), ((33,), 1, 3), ((4, 9), 1000, 1),
                                           ((2, 1), 7, 130), ((50,), 100_000, 9)])   # last: sort path
def test_embedding_kernels_match_numpy(rng, K, dtype, ids_shape, V, D):
    ids = rng.integers(0, V, ids_shape).astype(dtype)
    W = rand(rng, V, D)
    out = np.full(ids_shape + (D,), np.nan, np.float32)
    K.embedding_forward(ids, W, out)
    np.testing.assert_array_equal(out, W[ids])
    dy = rand(rng, *ids_shape, D)
    dW = rand(rng, V, D)   # the gradient accumulates into dW
    start = dW.copy()
    K.embedding_backward(ids, dy, dW)
    np.testing.assert_allclose(dW, start + np_scatter(ids, dy, V), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("V", [5, 3000, 1_000_000])
def test_embedding_fast_equals_ref_bitwise(rng, V):
    ids = rng.integers(0, V, (40, 31)).astype(np.int64)
    ids[:, :5] = 2   # a heavily repeated id
    dy = rand(rng, 40, 31, 16)
    a, b = np.zeros((V, 16), np.float32), np.zeros((V, 16), np.float32)
    _cpu.embedding_backward(ids, dy, a)
    _cpu.ref.embedding_backward(ids, dy, b)
    np.testing.assert_array_equal(a, b)


def test_embedding_backward_same_bits_at_any_thread_count(rng):
    # many repeats of few ids (the case atomics or per-thread partials would reorder)
    ids = np.concatenate([rng.integers(0, 37, 20000), rng.integers(0, 5000, 3000)]).astype(np.int32)
    dy = rand(rng, ids.size, 64) * 1000
    old = _cpu.get_num_threads()
    try:
        outs = []
        for nt in (1, 2, 3, 4):
            _cpu.set_num_threads(nt)
            dW = np.zeros((5000, 64), np.float32)
            _cpu.embedding_backward(ids, dy, dW)
            outs.append(dW)
    finally:
        _cpu.set_num_threads(old)
    ref = np.zeros((5000, 64), np.float32)
    _cpu.ref.embedding_backward(ids, dy, ref)
    for o in outs:
        np.testing.assert_array_equal(o, ref)


@pytest.mark.parametrize("K", MODULES)
@pytest.mark.parametrize("V,shape", [(5, (40, 31)), (3000, (40, 31)), (1_000_000, (9, 4)), (7, (0,)), (1, (6,))])
def test_embedding_backward_set_equals_fill_then_add(rng, K, V, shape):
    """accumulate=False overwrites dW (untouched rows zero) with the bits of fill(0) + the
    scatter-add, at any thread count; -0.0 rows come out +0.0 as after a fill."""
    ids = rng.integers(0, V, shape).astype(np.int64)
    if ids.size:
        ids.reshape(-1)[: min(5, ids.size)] = V - 1   # a repeated id, at the end of the range
    dy = rand(rng, *shape, 16)
    if ids.size:
        dy.reshape(-1, 16)[0] = -0.0
    want = np.zeros((V, 16), np.float32)
    _cpu.ref.embedding_backward(ids, dy, want)
    old = _cpu.get_num_threads()
    try:
        for nt in (1, 2, 3):
            _cpu.set_num_threads(nt)
            got = np.full((V, 16), np.nan, np.float32)   # every row must be written
            K.embedding_backward(ids, dy, got, accumulate=False)
            np.testing.assert_array_equal(got, want)
            assert not np.signbit(got).any() or np.signbit(want).any()
    finally:
        _cpu.set_num_threads(old)


def test_embedding_layer_step_overwrites_instead_of_zeroing(rng):
    """In fit the trainer no longer zeroes the embedding's gradient: the layer's first backward
    writes all of it (stale NaNs in the buffer must not reach Adam). The weights after three
    steps equal, bit for bit, those of the old path (trainer zeroes, layer adds), also when the
    layer is called twice (the second call adds)."""
    from kilnet import Input, Model
    ids = rng.integers(0, 50, (16, 6)).astype(np.int32)
    ids[:, 0] = 7
    y = rng.integers(0, 2, 16)

    def trained(tied, overwrite):
        set_random_seed(3)
        inp = Input((6,), dtype="int32")
        emb = Embedding(50, 4)
        if not overwrite:
            emb._overwrites_grads = False
        h = emb(inp)
        if tied:
            h = ops.add(h, emb(ops.subtract(49, inp)))   # the same layer on other ids
        m = Model(inp, Dense(2, activation="softmax")(Flatten()(h)))
        m.compile(optimizer=Adam(1e-2), loss="sparse_categorical_crossentropy")
        m.train_on_batch(ids, y)
        emb.dembeddings.fill(np.nan)
        m.train_on_batch(ids, y)
        m.train_on_batch(ids[::-1], y[::-1])
        return emb.embeddings.copy()
    for tied in (False, True):
        new, old = trained(tied, True), trained(tied, False)
        assert np.isfinite(new).all()
        np.testing.assert_array_equal(new, old)


def test_embedding_kernels_match_torch(rng):
    torch = pytest.importorskip("torch", exc_type=ImportError)
    V, D = 301, 19
    ids = rng.integers(0, V, (7, 23))
    W, dy = rand(rng, V, D), rand(rng, 7, 23, D)
    wt = torch.from_numpy(W.copy()).requires_grad_()
    yt = torch.nn.functional.embedding(torch.from_numpy(ids), wt)
    yt.backward(torch.from_numpy(dy))
    out, dW = np.empty((7, 23, D), np.float32), np.zeros((V, D), np.float32)
    _cpu.embedding_forward(ids, W, out)
    _cpu.embedding_backward(ids, dy, dW)
    np.testing.assert_array_equal(out, yt.detach().numpy())
    np.testing.assert_allclose(dW, wt.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("K", MODULES)
def test_embedding_bad_input(K):
    W = np.zeros((10, 4), np.float32)
    ids = np.array([[1, 2], [3, 4]])
    out = np.zeros((2, 2, 4), np.float32)
    K.embedding_forward(ids, W, out)
    for bad_id, where in ((10, 3), (-1, 0), (2**40, 1)):
        bad = ids.copy()
        bad.reshape(-1)[where] = bad_id
        with pytest.raises(ValueError, match=rf"id {bad_id} \(at flat index {where}.*input_dim=10"):
            K.embedding_forward(bad, W, out)
        with pytest.raises(ValueError, match=rf"id {bad_id} .*\[0, 10\)"):
            K.embedding_backward(bad, out, W.copy())
    with pytest.raises(ValueError, match="id -3"):
        K.embedding_forward(np.array([-3], np.int32), W, np.zeros((1, 4), np.float32))
    with pytest.raises(TypeError, match="int32 or int64"):
        K.embedding_forward(ids.astype(np.float32), W, out)
    with pytest.raises(TypeError, match="int32 or int64"):
        K.embedding_forward(ids.astype(np.int16), W, out)
    with pytest.raises(TypeError, match="float32"):
        K.embedding_forward(ids, W.astype(np.float64), out)
    with pytest.raises(ValueError, match="'out' must have shape"):
        K.embedding_forward(ids, W, np.zeros((2, 2, 5), np.float32))
    with pytest.raises(ValueError, match="'W' must be 2-D"):
        K.embedding_forward(ids, W.reshape(10, 2, 2), out)
    with pytest.raises(ValueError, match="'dy' must have shape"):
        K.embedding_backward(ids, np.zeros((2, 3, 4), np.float32), W.copy())
    with pytest.raises(ValueError, match="overlap"):
        K.embedding_backward(ids, W[:4].reshape(2, 2, 4), W)
    ro = W.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        K.embedding_backward(ids, out, ro)
    with pytest.raises(ValueError, match="C-contiguous"):
        K.embedding_forward(np.arange(8).reshape(2, 4)[:, ::2], W, out)
    empty = np.zeros((0, 4), np.float32)
    K.embedding_forward(np.zeros(0, np.int64), W, empty)   # no ids: nothing to do
    K.embedding_backward(np.zeros(0, np.int64), empty, W)


# ------------------------------------------------------------------ layer
def test_embedding_layer_gradient_finite_differences(rng):
    layer = Embedding(6, 3)
    layer._build((None, 4))
    ids = np.array([[0, 5, 5, 2], [5, 1, 0, 0]])
    dy = rand(rng, 2, 4, 3)
    layer.dembeddings[...] = 0
    layer.forward(ids)
    assert layer.backward(dy.copy()) is None   # ids have no gradient
    f = lambda: float((np.array(layer.forward(ids)).astype(np.float64) * dy).sum())
    assert_grad_close(layer.dembeddings, numeric_grad(f, layer.embeddings))
    layer.dembeddings[...] = 0
    layer.forward(ids)
    layer.backward(dy, need_dw=False)
    assert not layer.dembeddings.any()


def test_embedding_layer_weights_config_mask():
    layer = Embedding(10, 4, name="emb")
    assert layer.compute_output_shape((None, 3, 2)) == (None, 3, 2, 4)
    y = layer(np.array([[1, 0, 9]]))
    assert y.shape == (1, 3, 4) and y.dtype == np.float32
    assert [v.name for v in layer.variables] == ["embeddings"] and layer.embeddings.shape == (10, 4)
    assert np.abs(layer.embeddings).max() <= 0.05   # Keras's "uniform": RandomUniform(-0.05, 0.05)
    cfg = layer.get_config()
    assert cfg["embeddings_initializer"]["class_name"] == "RandomUniform" and cfg["mask_zero"] is False
    assert Embedding.from_config(cfg).get_config() == cfg
    assert layer.compute_mask(np.array([[1, 0]])) is None
    masked = Embedding(10, 4, mask_zero=True)
    np.testing.assert_array_equal(masked.compute_mask(np.array([[1, 0, 3]])), [[True, False, True]])
    np.testing.assert_array_equal(masked.compute_mask(Tensor(np.array([0, 2]))).numpy(), [False, True])
    w = np.arange(40, dtype=np.float32).reshape(10, 4)
    np.testing.assert_array_equal(Embedding(10, 4, weights=[w])(np.array([3, 1])).numpy(), w[[3, 1]])
    np.testing.assert_array_equal(Embedding(10, 4, weights=w)(np.array([[2]])).numpy(), w[[[2]]])
    with pytest.warns(UserWarning, match="input_length"):
        Embedding(10, 4, input_length=5)
    for bad, match in [(dict(input_dim=0, output_dim=2), "input_dim"), (dict(input_dim=3, output_dim=2.5), "output_dim"),
                       (dict(input_dim=3, output_dim=2, lora_rank=4), "lora_rank"),
                       (dict(input_dim=3, output_dim=2, embeddings_constraint="non_neg"), "embeddings_constraint"),
                       (dict(input_dim=3, output_dim=2, weights=np.zeros((2, 2))), "weights")]:
        with pytest.raises(ValueError, match=match):
            Embedding(**bad)


def test_embedding_layer_inputs_ints_floats_and_tape(rng):
    layer = Embedding(7, 2)
    ids = np.array([[1, 6], [0, 6]])
    out64 = layer(ids).numpy()
    expect = layer.embeddings[ids]
    np.testing.assert_array_equal(out64, expect)
    for cast in (np.int32, np.uint8, np.int16, np.float32, np.float64):   # floats holding ints: Keras casts
        np.testing.assert_array_equal(layer(ids.astype(cast)).numpy(), expect)
    np.testing.assert_array_equal(layer(Tensor(ids.astype(np.float32))).numpy(), expect)
    with pytest.raises(ValueError, match="id 7 .*input_dim=7"):
        layer(np.array([[7]]))
    with pytest.raises(TypeError, match="integer ids"):
        layer(np.array(["a"]))
    # the tape differentiates through it (the ids are not a source, the embeddings are)
    dy = rand(rng, 2, 2, 2)
    with GradientTape() as tape:
        loss = ops.sum(layer(Tensor(ids)) * Tensor(dy))
    (g,) = tape.gradient(loss, layer.trainable_variables)
    np.testing.assert_allclose(g.numpy(), np_scatter(ids, dy, 7), rtol=1e-6, atol=1e-7)


def test_embedding_model_fit_save_load(tmp_path):
    set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 40, (128, 6))
    y = (x[:, 0] % 2 == 0).astype(np.int64)   # the class is the parity of the first id
    m = Sequential([Embedding(40, 8, input_shape=(6,)), Flatten(), Dense(2, activation="softmax")])
    m.compile(optimizer=Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    before = m.layers[0].embeddings.copy()
    hist = m.fit(x, y, batch_size=16, epochs=12, verbose=0)
    assert hist.history["loss"][-1] < 0.5 * hist.history["loss"][0]
    assert hist.history["accuracy"][-1] > 0.9
    assert not np.array_equal(before, m.layers[0].embeddings)
    m.save(tmp_path / "emb.h5")
    m2 = load_model(tmp_path / "emb.h5")
    assert type(m2.layers[0]).__name__ == "Embedding" and m2.layers[0].get_config() == m.layers[0].get_config()
    for a, b in zip(m.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(m.predict(x), m2.predict(x))
    np.testing.assert_array_equal(m.predict(x.astype(np.float32)), m2.predict(x))   # float ids are cast


# ------------------------------------------------------------------ Keras 3 parity (files both ways)
KERAS_SCRIPT = r"""
import json, os, sys, numpy as np
import keras
from keras import layers as L
kilnet_file, keras_file, xpath, out = sys.argv[1:5]
x = np.load(xpath)
m = keras.models.load_model(kilnet_file)               # Keras 3 reads kilnet's file
res = {"kilnet_file_pred": m.predict(x, verbose=0).tolist(),
       "layers": [l.get_config() for l in m.layers]}
keras.utils.set_random_seed(1)
k = keras.Sequential([keras.Input((5,), dtype="int32"), L.Embedding(30, 6), L.LayerNormalization(),
                      L.Flatten(), L.Dense(3)])
k.save(keras_file)
res["keras_pred"] = k.predict(x, verbose=0).tolist()
res["keras_weights"] = [w.tolist() for w in k.get_weights()]
res["keras_weight_paths"] = [w.path for w in k.weights]
res["keras_configs"] = [l.get_config() for l in k.layers]
json.dump(res, open(out, "w"))
"""


def keras_backend():
    """A Keras 3 backend that imports here (torch, which CI installs, else jax), or None. Not
    under the sanitizer build (.ci/sanitize.sh preloads ASan, which the subprocess would inherit)."""
    if "libasan" in os.environ.get("LD_PRELOAD", ""):
        return None
    for backend in ("torch", "jax"):
        env = {**os.environ, "KERAS_BACKEND": backend}
        if subprocess.run([sys.executable, "-c", "import keras"], capture_output=True, env=env).returncode == 0:
            return backend
    return None


KERAS_BACKEND = keras_backend()


@pytest.mark.skipif(KERAS_BACKEND is None, reason="keras 3 (torch or jax backend) not installed")
def test_embedding_keras3_files_both_ways(tmp_path):
    set_random_seed(4)
    rng = np.random.default_rng(4)
    x = rng.integers(0, 30, (9, 5))
    m = Sequential([Embedding(30, 6, input_shape=(5,)), LayerNormalization(), Flatten(),
                    Dense(3, activation="softmax")])
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    m.fit(x, np.arange(9) % 3, epochs=2, verbose=0)
    m.layers[1].gamma[...] = rng.uniform(0.5, 1.5, 6)   # non-trivial LayerNormalization weights
    m.layers[1].beta[...] = rng.normal(size=6)
    m.save(tmp_path / "kilnet.h5")
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "k.py"
    script.write_text(KERAS_SCRIPT)
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "kilnet.h5"), str(tmp_path / "keras.h5"),
                        str(tmp_path / "x.npy"), str(tmp_path / "out.json")], capture_output=True, text=True,
                       timeout=600, env={**os.environ, "KERAS_BACKEND": KERAS_BACKEND})
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.load(open(tmp_path / "out.json"))
    np.testing.assert_allclose(res["kilnet_file_pred"], m.predict(x), rtol=1e-5, atol=1e-5)
    # Keras 3's file: same weights, layout and predictions in kilnet
    k = load_model(tmp_path / "keras.h5")
    assert [p.split("/", 1)[1] for p in res["keras_weight_paths"][:3]] == [
        "embedding/embeddings", "layer_normalization/gamma", "layer_normalization/beta"]
    assert [v.path for v in k.variables[:3]] == ["embedding/embeddings", "layer_normalization/gamma",
                                                 "layer_normalization/beta"]
    assert [w.shape for w in k.get_weights()] == [np.shape(w) for w in res["keras_weights"]]
    for a, b in zip(k.get_weights(), res["keras_weights"]):
        np.testing.assert_array_equal(a, np.asarray(b, np.float32))
    np.testing.assert_allclose(k.predict(x), res["keras_pred"], rtol=1e-5, atol=1e-5)
    # configs as Keras 3 writes them (after build: LayerNormalization's axis is a list)
    for ours, theirs in zip(k.layers[:2], res["keras_configs"][:2]):
        assert ours.get_config() == theirs


def test_embedding_regularizer_adds_its_penalty():
    from kilnet import regularizers
    x = np.random.default_rng(0).integers(0, 10, (8, 3))
    m = Sequential([Embedding(10, 4, embeddings_regularizer=regularizers.L2(0.5), input_shape=(3,)), Flatten(),
                    Dense(1)])
    m.compile(optimizer="sgd", loss="mse")
    loss = m.evaluate(x, np.zeros((8, 1), np.float32), verbose=0)
    penalty = 0.5 * float((m.layers[0].embeddings.astype(np.float64) ** 2).sum())
    np.testing.assert_allclose(loss, float((m.predict(x).astype(np.float64) ** 2).mean()) + penalty, rtol=1e-5)
    assert m.layers[0].get_config()["embeddings_regularizer"]["class_name"] == "L2"
