"""Trustworthy under bad input: property-based tests throw random shapes, dtypes, strides and
values at the public kernels and layers and require the reference's answer or a Python
exception, never a crash; threads share a model safely."""
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kilnet import _cpu
from kilnet.layers import Conv2D, Dense, Flatten
from kilnet.models import Sequential

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))

dtypes = st.sampled_from([np.float32, np.float32, np.float32, np.float64, np.int64, np.int32, np.bool_])
special = st.sampled_from([0.0, 1.0, -1.0, np.nan, np.inf, -np.inf, 1e30, -1e-30, 3.4e38])


@st.composite
def arrays(draw, ndim, max_side=9, min_side=0, dtype=None, allow_special=True):
    shape = tuple(draw(st.integers(min_side, max_side)) for _ in range(ndim))
    dt = dtype or draw(dtypes)
    a = np.random.default_rng(draw(st.integers(0, 2**31))).normal(size=shape)
    if allow_special and a.size and draw(st.booleans()):
        a.flat[draw(st.integers(0, a.size - 1))] = draw(special)
    with np.errstate(invalid="ignore", over="ignore"):
        a = a.astype(dt)
    if a.ndim and draw(st.booleans()) and a.shape[-1] > 1:   # a non-contiguous view
        a = a[..., ::2]
    return a


def same_outcome(call_fast, call_ref, inputs):
    """Run both; they must both raise the same exception type, or agree on the outputs. With
    NaN, Inf or values near float32's limit among the inputs only the first half holds: whether 0 * NaN in a padded position
    or inf - inf appears depends on the order of operations, so the values may differ."""
    results = []
    for call in (call_fast, call_ref):
        try:
            outs = call()
            results.append(("ok", [np.array(o) for o in outs]))
        except (TypeError, ValueError) as e:
            results.append(("err", type(e)))
    assert results[0][0] == results[1][0], results
    if results[0][0] == "err":
        assert results[0][1] == results[1][1]
        return
    if any(np.asarray(i).dtype.kind in "fc" and not np.isfinite(i).all() for i in inputs):
        return
    # Near float32's limit a float32 sum of products overflows where the double reference does
    # not (3.4e38 * 1.2 - ...): only "no crash" is required there.
    if any(np.asarray(i).size and np.abs(np.asarray(i, dtype=np.float64)).max() > 1e18 for i in inputs):
        return
    for a, b in zip(results[0][1], results[1][1]):
        # Either side may work in double: compare as float32, where beyond the range is inf.
        with np.errstate(over="ignore"):
            a, b = (np.asarray(v, dtype=np.float64).astype(np.float32) for v in (a, b))
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3, equal_nan=True)


@SETTINGS
@given(a=arrays(2), b=arrays(2), ta=st.booleans(), tb=st.booleans(), bias=st.booleans())
def test_gemm_property(a, b, ta, tb, bias):
    def run(K):
        m = a.shape[1] if ta else a.shape[0]
        n = b.shape[0] if tb else b.shape[-1] if b.ndim == 2 else 0
        c = np.zeros((m, n), np.float32)
        bb = np.ones(n, np.float32) if bias else None
        with np.errstate(all="ignore"):
            K.gemm(a, b, c, trans_a=ta, trans_b=tb, bias=bb)
        return [c]
    same_outcome(lambda: run(_cpu), lambda: run(_cpu.ref), [a, b])


@SETTINGS
@given(x=arrays(4, max_side=7), w=arrays(4, max_side=4), stride=st.integers(1, 3),
       pad=st.integers(0, 2), dil=st.integers(1, 2), p=st.integers(1, 8), q=st.integers(1, 8))
def test_conv2d_property(x, w, stride, pad, dil, p, q):
    def run(K):
        y = np.zeros((x.shape[0], p, q, w.shape[3]), np.float32)
        with np.errstate(all="ignore"):
            K.conv2d_forward(x, w, None, y, (stride, stride), (pad, pad), (dil, dil))
        dw = np.zeros(w.shape, np.float32)
        dx = np.zeros(x.shape, np.float32)
        with np.errstate(all="ignore"):
            K.conv2d_backward(np.ones_like(y), x, w, dx, dw, None, (stride, stride), (pad, pad), (dil, dil))
        return [y, dx, dw]
    same_outcome(lambda: run(_cpu), lambda: run(_cpu.ref), [x, w])


def test_conv2d_no_input_channels():
    """A layer with no input channel (hypothesis found it: SIGFPE in the fast backward): as the
    reference, dx and dw empty, db the output gradient's sums."""
    x, w = np.ones((6, 4, 5, 0), np.float32), np.ones((2, 4, 0, 3), np.float32)
    outs = []
    for K in (_cpu, _cpu.ref):
        dy = np.ones((6, 1, 4, 3), np.float32)
        dx, dw, db = np.zeros(x.shape, np.float32), np.zeros(w.shape, np.float32), np.zeros(3, np.float32)
        K.conv2d_backward(dy, x, w, dx, dw, db, (1, 1), (0, 0), (1, 1))
        outs.append(db)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], np.full(3, 24.0, np.float32))


@SETTINGS
@given(x=arrays(2, max_side=12), act=st.sampled_from(["relu", "tanh", "sigmoid", "linear", "softmax", "gelu"]))
def test_activation_property(x, act):
    def run(K):
        y = np.zeros(x.shape, np.float32)
        if act == "softmax":
            K.softmax_forward(x, y)
        else:
            K.activation_forward(act, x, y)
        return [y]
    same_outcome(lambda: run(_cpu), lambda: run(_cpu.ref), [x])


@SETTINGS
@given(p=arrays(2, max_side=10), t=arrays(2, max_side=10),
       loss=st.sampled_from(["mse", "mae", "binary_crossentropy", "categorical_crossentropy"]))
def test_loss_property(p, t, loss):
    def run(K):
        g = np.zeros(p.shape, np.float32)
        with np.errstate(all="ignore"):
            v = getattr(K, loss)(p, t, grad=g)
        return [np.float64(v), g]
    same_outcome(lambda: run(_cpu), lambda: run(_cpu.ref), [p, t])


@SETTINGS
@given(x=arrays(2, max_side=8), labels=arrays(1, max_side=8, dtype=np.int64, allow_special=False))
def test_sparse_loss_property(x, labels):
    def run(K):
        g = np.zeros(x.shape, np.float32)
        with np.errstate(all="ignore"):
            v = K.softmax_crossentropy(x, labels=labels, grad=g)
        return [np.float64(v), g]
    same_outcome(lambda: run(_cpu), lambda: run(_cpu.ref), [x])


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(x=arrays(4, max_side=10, min_side=0))
def test_model_input_property(x):
    """predict on arbitrary input: the right answer for well-formed input, else a clear error."""
    m = Sequential([Conv2D(2, 3, activation="relu", input_shape=(6, 6, 1)), Flatten(), Dense(3, activation="softmax")])
    try:
        out = m.predict(x)
    except (TypeError, ValueError) as e:
        assert str(e)
        return
    assert x.shape[1:] == (6, 6, 1) and np.isfinite(x).all()
    assert out.shape == (len(x), 3) and np.allclose(out.sum(1), 1, atol=1e-5)


def test_predict_from_many_threads():
    m = Sequential([Conv2D(8, 3, activation="relu", input_shape=(12, 12, 1)), Flatten(), Dense(5, activation="softmax")])
    xs = [np.random.default_rng(i).uniform(size=(37, 12, 12, 1)).astype(np.float32) for i in range(6)]
    want = [m.predict(x, batch_size=8) for x in xs]
    got = [None] * len(xs)
    errors = []

    def work(i):
        try:
            for _ in range(5):
                got[i] = m.predict(xs[i], batch_size=8)
                np.testing.assert_array_equal(got[i], want[i])
        except Exception as e:   # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_fit_and_predict_refuse_to_overlap():
    m = Sequential([Dense(4, activation="softmax", input_shape=(3,))])
    m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x, y = np.random.rand(64, 3), np.arange(64) % 4
    seen = []

    class Probe:   # runs predict and fit from inside a running fit
        pass
    from kilnet.callbacks import LambdaCallback

    def during_fit(batch, logs):
        if batch == 0:
            # as in Keras, a callback may predict and evaluate between steps; a nested fit refuses
            assert m.predict(x, verbose=0).shape == (64, 4)
            assert np.isfinite(m.evaluate(x, y, verbose=0))
            with pytest.raises(RuntimeError, match="while this model is training"):
                m.fit(x, y, verbose=0)
            seen.append(True)
    m.fit(x, y, verbose=0, callbacks=[LambdaCallback(on_train_batch_end=during_fit)])
    assert len(seen) == 1
    with m._guard("predict"):       # a predict in flight (another thread): fit and set_weights refuse
        with pytest.raises(RuntimeError, match="in use in another thread"):
            m.fit(x, y, verbose=0)
        with pytest.raises(RuntimeError, match="in use in another thread"):
            m.set_weights(m.get_weights())
    m.fit(x, y, verbose=0)          # and afterwards it runs


def test_nan_loss_warns():
    m = Sequential([Dense(2, input_shape=(2,))])
    m.compile(optimizer="sgd", loss="mse")
    x = np.full((8, 2), 3e38, np.float32)       # finite, but the layer's output overflows
    m.layers[0].kernel[...] = 1.0
    with pytest.warns(RuntimeWarning, match="loss became"):
        m.fit(x, x, verbose=0)


@SETTINGS
@given(x=arrays(4, max_side=8), pool=st.integers(1, 3), stride=st.integers(1, 3), pad=st.integers(0, 1),
       p=st.integers(1, 6), q=st.integers(1, 6), kind=st.sampled_from(["max", "avg"]))
def test_pool2d_property(x, pool, stride, pad, p, q, kind):
    def run(K):
        c = x.shape[3] if x.ndim == 4 else 1
        y = np.zeros((x.shape[0], p, q, c), np.float32)
        getattr(K, f"{kind}pool2d_forward")(x, y, (pool, pool), (stride, stride), (pad, pad))
        return [y]
    same_outcome(lambda: run(_cpu), lambda: run(_cpu.ref), [x])


def _layer_models():
    from kilnet import layers as L
    return {
        "conv": lambda: [L.Conv2D(3, 3, padding="same", activation="relu"), L.Flatten()],
        "maxpool": lambda: [L.MaxPooling2D(2, padding="same"), L.Flatten()],
        "avgpool": lambda: [L.AveragePooling2D(2), L.Flatten()],
        "gap": lambda: [L.GlobalAveragePooling2D()],
        "bn": lambda: [L.BatchNormalization(), L.Flatten()],
        "dropout": lambda: [L.Dropout(0.5), L.Flatten()],
        "zeropad": lambda: [L.ZeroPadding2D(1), L.Flatten()],
        "reshape": lambda: [L.Reshape((-1,))],
        "rnn": lambda: [L.Reshape((6, 6)), L.SimpleRNN(4)],
        "lstm": lambda: [L.Reshape((6, 6)), L.LSTM(4, return_sequences=True), L.Flatten()],
        "gru": lambda: [L.Reshape((6, 6)), L.GRU(4)],
    }


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(kind=st.sampled_from(sorted(_layer_models())), x=arrays(4, max_side=7, min_side=0),
       train=st.booleans())
def test_every_layer_input_property(kind, x, train):
    """Each layer type inside a model, fed arbitrary input: a right-shaped finite answer for
    well-formed input, else a clear exception; a training step likewise."""
    from kilnet import layers as L
    m = Sequential([L.InputLayer(shape=(6, 6, 1)), *_layer_models()[kind](), Dense(2, activation="softmax")])
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    try:
        if train:
            m.fit(x, np.arange(len(x)) % 2, verbose=0, batch_size=4)
        out = m.predict(x)
    except (TypeError, ValueError) as e:
        assert str(e)
        return
    assert x.shape[1:] == (6, 6, 1) and np.isfinite(x).all()
    assert out.shape == (len(x), 2) and np.isfinite(out).all()


def test_huge_virtual_shapes_refused_cleanly():
    """A broadcast view can claim 2^40 elements without memory behind it: refused, no crash."""
    huge = np.broadcast_to(np.float32(1), (1 << 20, 1 << 20))
    c = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError, match="contiguous"):
        _cpu.gemm(huge, huge, c)
    m = Sequential([Dense(2, input_shape=(1 << 20,))])
    with pytest.raises((ValueError, MemoryError)):
        m.predict(np.broadcast_to(np.float32(1), (1 << 21, 1 << 20)))


def test_checkpoint_survives_kill_mid_save(tmp_path):
    """SIGKILL while a model is being saved over an existing file: the old file still loads."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from kilnet.models import load_model
    path = tmp_path / "ckpt.h5"
    script = f"""
import numpy as np
from kilnet.layers import Dense
from kilnet.models import Sequential
m = Sequential([Dense(2000, input_shape=(2000,)), Dense(10)])
m.save({str(path)!r})
print("saved", flush=True)
while True:
    m.save({str(path)!r})
"""
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "saved"
        time.sleep(0.7)          # somewhere inside one of the following saves
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    m = load_model(path)
    assert m.count_params() == 2000 * 2000 + 2000 + 2000 * 10 + 10
