"""The engine on the GPU: a functional model with two inputs and two outputs, a subclassed model
with a custom layer written with kilnet.ops, and a GradientTape loop give the same losses,
gradients and predictions on 'cuda' as on 'cpu' (to float32 tolerance)."""
import numpy as np
import pytest

import kilnet
from kilnet import layers, ops

pytestmark = pytest.mark.cuda


def two_in_two_out():
    a, b = kilnet.Input((6,), name="a"), kilnet.Input((4,), name="b")
    h = layers.concatenate([layers.Dense(8, activation="relu")(a), layers.Dense(8, activation="tanh")(b)])
    return kilnet.Model([a, b], [layers.Dense(3, activation="softmax", name="cls")(h),
                                 layers.Dense(1, name="reg")(h)])


class Scale(layers.Layer):
    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return ops.tanh(x * self.w) + ops.square(x) * 0.1


class Sub(kilnet.Model):
    def __init__(self):
        super().__init__()
        self.d1, self.s, self.d2 = layers.Dense(8), Scale(), layers.Dense(3, activation="softmax")

    def call(self, x, training=None):
        return self.d2(self.s(self.d1(x)))


def _data(n=40):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(n, 6)).astype(np.float32)
    b = rng.normal(size=(n, 4)).astype(np.float32)
    return a, b, rng.integers(0, 3, n), rng.normal(size=(n, 1)).astype(np.float32)


def _pair(make, probe):
    kilnet.utils.set_random_seed(0)
    cpu, gpu = make(), make()
    cpu.predict(probe)
    gpu.predict(probe)
    gpu.set_weights(cpu.get_weights())
    gpu.to("cuda")
    return cpu, gpu


def test_functional_two_outputs_fit_matches_cpu():
    a, b, y, r = _data()
    cpu, gpu = _pair(two_in_two_out, [a[:2], b[:2]])
    hs = []
    for m in (cpu, gpu):
        m.compile("adam", loss=["sparse_categorical_crossentropy", "mse"], loss_weights=[1.0, 0.5],
                  metrics=[["accuracy"], []])
        hs.append(m.fit([a, b], [y, r], batch_size=8, epochs=2, shuffle=False, verbose=0).history)
    for k in hs[0]:
        np.testing.assert_allclose(hs[1][k], hs[0][k], rtol=2e-4, atol=1e-5, err_msg=k)
    for wc, wg in zip(cpu.get_weights(), gpu.get_weights()):
        np.testing.assert_allclose(wg, wc, rtol=1e-4, atol=1e-5)
    for pc, pg in zip(cpu.predict([a, b]), gpu.predict([a, b])):
        np.testing.assert_allclose(pg, pc, rtol=1e-4, atol=1e-5)


def test_subclassed_with_ops_layer_matches_cpu():
    a, _, y, _ = _data()
    cpu, gpu = _pair(Sub, a[:2])
    for m in (cpu, gpu):
        m.compile("sgd", "sparse_categorical_crossentropy")
        m.fit(a, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    for wc, wg in zip(cpu.get_weights(), gpu.get_weights()):
        np.testing.assert_allclose(wg, wc, rtol=1e-4, atol=1e-5)


def test_gradient_tape_matches_cpu():
    import cupy
    a, _, y, _ = _data()
    cpu, gpu = _pair(Sub, a[:2])
    grads = []
    for m, x in ((cpu, a), (gpu, cupy.asarray(a))):
        with kilnet.GradientTape() as tape:
            loss = kilnet.losses.SparseCategoricalCrossentropy()(y, m(x))
        grads.append([np.asarray(g.numpy()) for g in tape.gradient(loss, m.trainable_variables)])
    for gc, gg in zip(*grads):
        np.testing.assert_allclose(gg, gc, rtol=1e-4, atol=1e-6)


def test_op_on_two_devices_is_refused():
    import cupy
    x = kilnet.ops.convert_to_tensor(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="two devices"):
        x + kilnet.Tensor(cupy.ones(3, np.float32))
