"""Keras's mask propagation on the engine: a layer's compute_mask marks its outputs, a call()
taking `mask` receives the first input's mask, layers with supports_masking pass it on, others
drop it, merge layers AND their inputs' masks; eager calls and functional models alike."""
import numpy as np

import kilnet
from kilnet import layers


class MakeMask(layers.Layer):
    """Marks steps whose first feature is non-zero (a Masking-like layer written by a user)."""

    def call(self, x):
        return x * 1.0

    def compute_mask(self, x, mask=None):
        return np.asarray(x.numpy()[..., 0] != 0)


class Sink(layers.Layer):
    def call(self, x, mask=None):
        self.seen = mask
        return x


X = np.array([[[1.], [2.], [0.]], [[3.], [0.], [0.]]], np.float32)
WANT = np.array([[True, True, False], [True, False, False]])


def test_mask_reaches_call_through_supporting_layers():
    sink = Sink()
    sink(layers.Dropout(0.5)(layers.Dense(2)(MakeMask()(X))))
    np.testing.assert_array_equal(sink.seen, WANT)


def test_layer_without_masking_support_drops_the_mask():
    sink = Sink()
    sink(layers.Reshape((3, 1))(MakeMask()(X)))
    assert sink.seen is None


def test_functional_model_propagates_masks():
    i = kilnet.Input((3, 1))
    sink = Sink()
    m = kilnet.Model(i, sink(layers.Dense(2)(MakeMask()(i))))
    assert m.predict(X).shape == (2, 3, 2)
    np.testing.assert_array_equal(sink.seen, WANT)


def test_merge_ands_masks():
    a = MakeMask()(X)
    b = MakeMask()(np.array([[[1.], [0.], [1.]], [[1.], [1.], [1.]]], np.float32))
    sink = Sink()
    sink(layers.Add()([a, b]))
    np.testing.assert_array_equal(sink.seen, [[True, False, False], [True, False, False]])
