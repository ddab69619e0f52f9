"""CUDA embedding (kilnet._cuda) against the CPU reference (kilnet._cpu.ref): gather for int32
and int64 ids of odd shapes, and the scatter-add, which sorts (id, position) pairs stably and
adds each id's rows in position order, exactly as the CPU loop: the same bits as the CPU and
from run to run. Bad ids are caught on the device (ValueError naming the first one); outputs
start as NaN so an unwritten element fails. Skipped without a GPU."""
import numpy as np
import pytest

from kilnet import _cpu

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("ids_shape,V,D", [((3, 5, 7), 13, 5), ((33,), 1, 3), ((4, 9), 1000, 1),
                                           ((2, 1), 7, 300), ((64, 128), 30000, 128), ((5000,), 3, 33)])
def test_embedding_matches_cpu(gpu, dtype, ids_shape, V, D):
    r = np.random.default_rng(0)
    ids = r.integers(0, V, ids_shape).astype(dtype)
    W = r.uniform(-1, 1, (V, D)).astype(np.float32)
    dy = r.uniform(-1, 1, ids_shape + (D,)).astype(np.float32)
    out = gpu.poisoned(ids_shape + (D,))
    gpu.k.embedding_forward(gpu.dev(ids), gpu.dev(W), out)
    np.testing.assert_array_equal(gpu.host(out), W[ids])
    dW0 = r.uniform(-1, 1, (V, D)).astype(np.float32)
    dWd = gpu.dev(dW0)
    gpu.k.embedding_backward(gpu.dev(ids), gpu.dev(dy), dWd)
    expect = dW0.copy()
    _cpu.ref.embedding_backward(ids, dy, expect)
    np.testing.assert_array_equal(gpu.host(dWd), expect)   # same additions in the same order


def test_embedding_backward_overwrite_matches_cpu(gpu):
    """accumulate=False (the layer's first write in a step): dW zeroed on the stream, then the
    rows; the bits of the CPU's one-pass version."""
    r = np.random.default_rng(2)
    ids = r.integers(0, 500, (40, 33))
    dy = r.uniform(-1, 1, (40, 33, 24)).astype(np.float32)
    dW = gpu.poisoned((500, 24))
    gpu.k.embedding_backward(gpu.dev(ids), gpu.dev(dy), dW, accumulate=False)
    expect = np.full((500, 24), np.nan, np.float32)
    _cpu.embedding_backward(ids, dy, expect, accumulate=False)
    np.testing.assert_array_equal(gpu.host(dW), expect)


def test_embedding_backward_is_deterministic(gpu):
    r = np.random.default_rng(1)
    ids = gpu.dev(np.minimum(r.zipf(1.3, 20000), 999).astype(np.int64))
    dy = gpu.dev(r.uniform(-1, 1, (20000, 64)).astype(np.float32) * 100)
    outs = []
    for _ in range(3):
        dW = gpu.cp.zeros((1000, 64), gpu.cp.float32)
        gpu.k.embedding_backward(ids, dy, dW)
        outs.append(gpu.host(dW))
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])


def test_embedding_bad_ids_and_arrays(gpu):
    cp, k = gpu.cp, gpu.k
    W = cp.zeros((10, 4), cp.float32)
    out = cp.zeros((2, 3, 4), cp.float32)
    for bad_id, where in ((10, 4), (-1, 0)):
        ids = np.array([[1, 2, 3], [4, 5, 6]])
        ids.reshape(-1)[where] = bad_id
        with pytest.raises(ValueError, match=rf"id {bad_id} \(at flat index {where}.*input_dim=10"):
            k.embedding_forward(cp.asarray(ids), W, out)
        with pytest.raises(ValueError, match=rf"id {bad_id} .*\[0, 10\)"):
            k.embedding_backward(cp.asarray(ids.astype(np.int32)), out, W)
    ids = cp.asarray(np.array([[1, 2, 3], [4, 5, 6]]))
    with pytest.raises(TypeError, match="CuPy"):
        k.embedding_forward(np.zeros((2, 3), np.int64), W, out)
    with pytest.raises(TypeError, match="int32 or int64"):
        k.embedding_forward(ids.astype(cp.float32), W, out)
    with pytest.raises(ValueError, match="'out' must have shape"):
        k.embedding_forward(ids, W, cp.zeros((2, 3, 5), cp.float32))
    with pytest.raises(ValueError, match="overlap"):
        k.embedding_backward(ids, W[:6].reshape(2, 3, 4), W)


def test_embedding_layer_on_cuda_matches_cpu():
    import kilnet
    from kilnet.layers import Dense, Embedding, Flatten
    from kilnet.models import Sequential
    kilnet.utils.set_random_seed(0)
    x = np.random.default_rng(0).integers(0, 50, (64, 6))
    y = np.arange(64) % 3
    models = []
    for dev in ("cpu", "cuda"):
        kilnet.utils.set_random_seed(0)
        m = Sequential([Embedding(50, 8, input_shape=(6,)), Flatten(), Dense(3, activation="softmax")])
        m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        m.to(dev)
        m.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
        models.append(m)
    for a, b in zip(models[0].get_weights(), models[1].get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(models[0].predict(x), models[1].predict(x), rtol=1e-5, atol=1e-6)
