"""Models on the GPU: the same model, weights and batches give the same losses, weights and
predictions on 'cuda' as on 'cpu' (to float32 tolerance), every layer type included; moving,
saving and loading work across devices; bad device use raises clearly."""
import numpy as np
import pytest

import kilnet
from kilnet import layers as L
from kilnet.models import Sequential, load_model

pytestmark = pytest.mark.cuda


def _data(rng, n, shape, classes):
    x = rng.uniform(-1, 1, size=(n, *shape)).astype(np.float32)
    y = rng.integers(0, classes, size=n)
    return x, y


def _pair(make, input_shape):
    """The same model twice, with identical weights: one on the CPU, one on the GPU."""
    kilnet.utils.set_random_seed(0)
    cpu = make()
    cpu.build((None, *input_shape))
    gpu = make()
    gpu.build((None, *input_shape))
    gpu.set_weights(cpu.get_weights())
    gpu.to("cuda")
    return cpu, gpu


MODELS = {
    "canonical": (lambda: Sequential([L.Conv2D(8, (3, 3), activation="relu"), L.Flatten(),
                                      L.Dense(10, activation="softmax")]), (12, 12, 1)),
    "cnn_bn_pool_dropout": (lambda: Sequential([
        L.Conv2D(6, 3, padding="same", use_bias=False), L.BatchNormalization(), L.Activation("relu"),
        L.MaxPooling2D(), L.Conv2D(5, 3, strides=2, activation="tanh"), L.AveragePooling2D(),
        L.Dropout(0.25, seed=3), L.Flatten(), L.Dense(7, activation="sigmoid"), L.Dense(4, activation="softmax")]),
        (13, 11, 3)),
    "lstm": (lambda: Sequential([L.LSTM(6, return_sequences=True), L.GRU(5), L.Dense(3, activation="softmax")]),
             (7, 4)),
    "simple_rnn_global_pool": (lambda: Sequential([L.SimpleRNN(9, return_sequences=True),
                                                   L.Dense(3, activation="softmax")]), (5, 2)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("optimizer", ["adam", "sgd", "rmsprop"])
def test_fit_matches_cpu(name, optimizer):
    make, shape = MODELS[name]
    rng = np.random.default_rng(5)
    cpu, gpu = _pair(make, shape)
    x, y = _data(rng, 37, shape, cpu.output_shape[-1])
    if len(cpu.output_shape) == 3:   # return_sequences: one label per step
        y = rng.integers(0, cpu.output_shape[-1], size=(37, cpu.output_shape[1]))
    for m in (cpu, gpu):
        m.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    hc = cpu.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history
    hg = gpu.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0).history
    np.testing.assert_allclose(hg["loss"], hc["loss"], rtol=2e-4, atol=1e-5)
    assert hg["accuracy"] == pytest.approx(hc["accuracy"], abs=1.5 / 37)
    for wc, wg in zip(cpu.get_weights(), gpu.get_weights()):
        assert isinstance(wg, np.ndarray)
        np.testing.assert_allclose(wg, wc, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(gpu.predict(x, verbose=0), cpu.predict(x, verbose=0), rtol=1e-3, atol=1e-5)
    ec, eg = cpu.evaluate(x, y, verbose=0), gpu.evaluate(x, y, verbose=0)
    np.testing.assert_allclose(eg, ec, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("loss,units,act", [("mse", 3, "linear"), ("binary_crossentropy", 1, "sigmoid"),
                                            ("categorical_crossentropy", 4, "softmax"), ("mae", 2, "tanh")])
def test_losses_match_cpu(loss, units, act):
    rng = np.random.default_rng(2)
    cpu, gpu = _pair(lambda: Sequential([L.Dense(6, activation="relu"), L.Dense(units, activation=act)]), (5,))
    x = rng.normal(size=(29, 5)).astype(np.float32)
    if loss == "categorical_crossentropy":
        y = np.eye(units, dtype=np.float32)[rng.integers(0, units, 29)]
    elif loss == "binary_crossentropy":
        y = rng.integers(0, 2, size=(29, 1)).astype(np.float32)
    else:
        y = rng.normal(size=(29, units)).astype(np.float32)
    for m in (cpu, gpu):
        m.compile(optimizer="adam", loss=loss)
    kilnet.utils.set_random_seed(1)
    hc = cpu.fit(x, y, batch_size=10, epochs=3, verbose=0).history
    kilnet.utils.set_random_seed(1)
    hg = gpu.fit(x, y, batch_size=10, epochs=3, verbose=0).history
    np.testing.assert_allclose(hg["loss"], hc["loss"], rtol=2e-4, atol=1e-6)


def test_device_context_and_moves(tmp_path):
    with kilnet.device("cuda"):
        m = Sequential([L.Dense(4, activation="relu", input_shape=(3,)), L.Dense(2, activation="softmax")])
    assert m.device == "cuda"
    import cupy
    assert isinstance(m.layers[0].kernel, cupy.ndarray)
    m.compile("adam", "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    y = np.arange(20) % 2
    m.fit(x, y, epochs=1, verbose=0)
    p = tmp_path / "m.h5"
    m.save(p)
    back = load_model(p)
    assert back.device == "cpu"
    np.testing.assert_allclose(back.predict(x, verbose=0), m.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    # the optimizer state survived the trip: one more step agrees on both devices
    back.to("cuda")
    m.to("cpu")
    assert isinstance(m.layers[0].kernel, np.ndarray) and m.optimizer.state["m"].__class__ is np.ndarray
    m.fit(x, y, epochs=1, verbose=0, shuffle=False)
    back.fit(x, y, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(m.get_weights(), back.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_bad_device_use():
    with pytest.raises(ValueError, match="unknown device"):
        Sequential().to("tpu")
    m = Sequential([L.Dense(2, input_shape=(3,))]).to("cuda")
    import cupy
    x = np.ones((1, 3), np.float32)
    with pytest.raises(TypeError, match="numpy"):
        m.layers[0].forward(x)   # a numpy batch into GPU weights: refused by the kernel binding
    k = kilnet.backend.cuda_module()
    with pytest.raises(TypeError, match="CuPy"):
        k.gemm(x, cupy.ones((3, 2), np.float32), cupy.empty((1, 2), np.float32))
    with pytest.raises(TypeError, match="GPU"):
        kilnet._cpu.gemm(cupy.ones((1, 3), np.float32), np.ones((3, 2), np.float32), np.empty((1, 2), np.float32))
