""".h5 files with the layers beyond Dense/Conv2D: kilnet save -> kilnet load gives the same
layers, configs and predictions, and a file Keras 3 writes with the same models loads in kilnet
with Keras's predictions."""
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_ref import needs_keras
from kilnet import Input, layers
from kilnet.models import Sequential, load_model

# The two models, as source that runs with `L` = keras.layers or kilnet.layers.
MODELS = {
    "seq": ((20, 3), """[
        L.Conv1D(4, 3, padding="causal", dilation_rate=2, activation="gelu"),
        L.MaxPooling1D(2),
        L.Conv1D(5, 3, padding="same", strides=2, activation="swish"),
        L.AveragePooling1D(2, padding="same"),
        L.UpSampling1D(3),
        L.GlobalMaxPooling1D(keepdims=True),
        L.Conv1D(3, 1),
        L.GlobalAveragePooling1D(),
        L.Dense(3, activation="mish"),
    ]"""),
    "img": ((8, 9, 2), """[
        L.Rescaling(0.5, offset=0.1),
        L.Conv2DTranspose(3, 3, strides=2, padding="same", activation="elu"),
        L.DepthwiseConv2D(3, depth_multiplier=2, activation="selu"),
        L.SeparableConv2D(4, 3, padding="same", depth_multiplier=2),
        L.ReLU(max_value=6.0, negative_slope=0.05),
        L.LeakyReLU(negative_slope=0.2),
        L.ELU(alpha=0.7),
        L.PReLU(shared_axes=[1, 2]),
        L.UpSampling2D(2, interpolation="bilinear"),
        L.Cropping2D(((1, 0), (2, 1))),
        L.UpSampling2D((1, 2)),
        L.GlobalMaxPooling2D(),
        L.Dense(5),
        L.Softmax(),
    ]"""),
}


def _kilnet_model(key, seed):
    shape, src = MODELS[key]
    m = Sequential([Input(shape), *eval(src, {"L": layers})])
    r = np.random.default_rng(seed)
    for layer in m.layers:
        layer.set_weights([(r.standard_normal(w.shape) * 0.4).astype(np.float32) for w in layer.get_weights()])
    return m


@pytest.mark.parametrize("key", sorted(MODELS))
def test_kilnet_round_trip(key, tmp_path):
    m = _kilnet_model(key, 0)
    x = np.random.default_rng(1).standard_normal((4, *MODELS[key][0])).astype(np.float32)
    expected = m.predict(x)
    path = tmp_path / f"{key}.h5"
    m.save(path)
    back = load_model(path)
    assert [type(l) for l in back.layers] == [type(l) for l in m.layers]
    for a, b in zip(m.layers, back.layers):
        assert a.get_config() == b.get_config()
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(wa, wb)
    np.testing.assert_allclose(back.predict(x), expected, rtol=1e-6, atol=1e-6)


_KERAS_WRITE = r"""
import os, sys
os.environ["KERAS_BACKEND"] = "jax"
import numpy as np, keras
from keras import layers as L
shape, src, path, xpath, ppath = eval(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
keras.utils.set_random_seed(0)
m = keras.Sequential([keras.Input(shape), *eval(src)])
r = np.random.default_rng(0)
for layer in m.layers:
    layer.set_weights([(r.standard_normal(w.shape) * 0.4).astype(np.float32) for w in layer.get_weights()])
m.save(path)
np.save(ppath, m.predict(np.load(xpath), verbose=0))
"""


@needs_keras
@pytest.mark.parametrize("key", sorted(MODELS))
def test_reads_keras3_file(key, tmp_path):
    shape, src = MODELS[key]
    x = np.random.default_rng(1).standard_normal((4, *shape)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "w.py"
    script.write_text(_KERAS_WRITE)
    path = tmp_path / f"{key}.h5"
    r = subprocess.run([sys.executable, str(script), repr(shape), src, str(path), str(tmp_path / "x.npy"),
                        str(tmp_path / "p.npy")], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "KERAS_BACKEND": "jax"})
    assert r.returncode == 0, r.stderr[-3000:]
    m = load_model(path)
    assert [type(l).__name__ for l in m.layers] == [type(l).__name__ for l in _kilnet_model(key, 0).layers]
    np.testing.assert_allclose(m.predict(x), np.load(tmp_path / "p.npy"), rtol=2e-5, atol=2e-5)
