"""Explanations on the GPU: saliency and integrated gradients of a model on 'cuda' equal the
CPU's, completeness holds there too (CNN and RNN), and no parameter gradient is touched."""
import numpy as np
import pytest

from kilnet import explain
from kilnet.layers import LSTM, Conv2D, Dense, Flatten
from kilnet.models import Sequential
from kilnet.utils import set_random_seed

pytestmark = pytest.mark.cuda


def _pair(layers_fn, shape):
    set_random_seed(5)
    cpu = Sequential(layers_fn())
    cpu.build((None, *shape))
    gpu = Sequential(layers_fn())
    gpu.build((None, *shape))
    gpu.set_weights(cpu.get_weights())
    return cpu, gpu.to("cuda")


CNN = (lambda: [Conv2D(4, 3, activation="relu"), Flatten(), Dense(16, activation="tanh"),
                Dense(3, activation="softmax")], (9, 8, 1))
RNN = (lambda: [LSTM(6), Dense(3, activation="softmax")], (5, 4))


@pytest.mark.parametrize("net", [CNN, RNN], ids=["cnn", "rnn"])
def test_gpu_explanations_match_cpu(net):
    cpu, gpu = _pair(*net)
    x = np.random.default_rng(1).uniform(0, 1, (5, *net[1])).astype(np.float32)
    np.testing.assert_allclose(explain.saliency(gpu, x), explain.saliency(cpu, x), rtol=1e-3, atol=1e-6)
    for layer in gpu.layers:
        for s in layer._specs:
            if s.trainable:
                assert float(abs(getattr(layer, "d" + s.attr)).max()) == 0.0
    ig_c, dc = explain.integrated_gradients(cpu, x, target=1, return_delta=True)
    ig_g, dg = explain.integrated_gradients(gpu, x, target=1, return_delta=True)
    assert isinstance(ig_g, np.ndarray)
    np.testing.assert_allclose(ig_g, ig_c, rtol=1e-3, atol=1e-6)
    f = gpu.predict(x, verbose=0)[:, 1] - gpu.predict(np.zeros_like(x), verbose=0)[:, 1]
    assert np.all(np.abs(dg) <= 0.01 * np.maximum(np.abs(f), 1e-3))   # completeness within 1%
