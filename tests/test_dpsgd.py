"""DP-SGD (kilnet.privacy.DPSGD / make_private): the clipped, noised update equals a plain
per-example loop (one example at a time through the model under a GradientTape, clip, sum,
noise from the same seed, divide) for Dense, Conv2D, LSTM and functional models; with no
noise and a huge clip it is plain SGD / Adam; bad input is refused clearly."""
import numpy as np
import pytest

import kilnet as keras
from kilnet import layers
from kilnet.privacy import DPAdam, DPSGD, compute_epsilon, make_private
from kilnet.privacy.dpsgd import gaussian

SEED = 7


def _flat(arrs):
    return np.concatenate([np.asarray(a, np.float64).ravel() for a in arrs])


def _reference_update(model, x, y, loss_fn, clip, sigma, seed, denom=None):
    """The DP-SGD gradient the slow way: per example through the tape."""
    xs = x if isinstance(x, list) else [x]
    n = len(y)
    total = None
    for i in range(n):
        xi = [a[i:i + 1] for a in xs]
        with keras.GradientTape() as tape:
            pred = model(xi if isinstance(x, list) else xi[0], training=True)
            loss = loss_fn(y[i:i + 1], pred)
        g = _flat(tape.gradient(loss, model.trainable_variables))
        g *= min(1.0, clip / max(np.linalg.norm(g), 1e-30))
        total = g if total is None else total + g
    noise = gaussian(np.random.default_rng(seed), total.size).astype(np.float64)
    return (total + noise * sigma * clip) / (denom or n)


def _check_step(model, x, y, clip=0.5, sigma=0.7, loss="sparse_categorical_crossentropy", tol=2e-4):
    loss_fn = keras.losses.get(loss)
    want = _reference_update(model, x, y, loss_fn, clip, sigma, SEED)
    before = _flat(model.trainable_variables)   # snapshot (values copied by _flat)
    model.compile(optimizer=DPSGD(clip, sigma, learning_rate=1.0, seed=SEED), loss=loss)
    model.train_on_batch(x, y)
    got = before - _flat(model.trainable_variables)   # SGD, lr 1: the step is the gradient
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, np.abs(want).max()) * 0.1)
    return model.optimizer


def _data(shape, n=12, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n,) + shape).astype(np.float32), rng.integers(0, classes, n)


def test_dense_matches_per_example_loop():
    x, y = _data((7,))
    m = keras.Sequential([layers.Input((7,)), layers.Dense(9, activation="relu"),
                          layers.Dense(6, activation="gelu"), layers.Dense(4, activation="softmax")])
    opt = _check_step(m, x, y)
    assert m.optimizer._plan(m).fast
    assert 0.0 <= opt.last_clip_fraction <= 1.0


@pytest.mark.parametrize("t,units", [(3, 20), (12, 2)])   # both per-example norm forms (Gram / materialised)
def test_dense_on_sequences(t, units):
    x, y = _data((t, 5), n=6)
    m = keras.Sequential([layers.Input((t, 5)), layers.Dense(units, activation="tanh"), layers.Flatten(),
                          layers.Dense(4, activation="softmax")])
    _check_step(m, x, y)


def test_conv2d_matches_per_example_loop():
    x, y = _data((9, 8, 2), n=10)
    m = keras.Sequential([layers.Input((9, 8, 2)),
                          layers.Conv2D(5, 3, activation="relu"),
                          layers.Conv2D(3, (2, 3), strides=2, padding="same", activation="gelu"),
                          layers.Conv2D(4, 3, padding="same", activation="linear", use_bias=False),
                          layers.MaxPooling2D(2), layers.Flatten(), layers.Dense(4, activation="softmax")])
    _check_step(m, x, y)
    assert m.optimizer._plan(m).fast


def test_canonical_cnn_matches_per_example_loop():
    from kilnet.cli import canonical_model
    x, y = _data((28, 28, 1), n=6, classes=10)
    _check_step(canonical_model(), x, y, clip=0.1, sigma=1.1)


@pytest.mark.parametrize("conv", [dict(filters=16, kernel_size=3, strides=2, padding="same", activation="relu"),
                                  dict(filters=5, kernel_size=(2, 3), activation="tanh"),
                                  dict(filters=32, kernel_size=3, activation="linear", use_bias=False)],
                         ids=["relu-same-stride2", "tanh-odd", "linear-nobias"])
@pytest.mark.parametrize("direct", ["kernel", "blocks-forced"])
def test_conv_dense_group_matches_per_example_loop(conv, direct, monkeypatch):
    """Conv2D -> Flatten -> Dense runs as the fused group under DP-SGD too (its per-example pass
    and the Dense's clipped sum from the fused kernels) where the one-pass per-example kernel
    applies (AVX-512, ReLU/linear), else unfused from the first forward on (the group does not
    form: fusion.allowing(..., per_example=True)); 21 examples: a group of 16 lanes and one of 8."""
    from kilnet import _cpu
    from kilnet.layers import conv_dense
    if direct == "blocks-forced":   # no one-pass kernel: the step must notice and run unfused
        monkeypatch.setenv("KILNET_CONV_DENSE_PATH", "blocks")
    seen, groups = [], []
    real = conv_dense._Backward.per_example
    monkeypatch.setattr(conv_dense._Backward, "per_example", lambda self, dz: (seen.append(dz.shape), real(self, dz))[1])
    real_call = conv_dense.call_group
    monkeypatch.setattr(conv_dense, "call_group", lambda *a: (groups.append(1), real_call(*a))[1])
    x, y = _data((11, 10, 2), n=21, classes=5)
    m = keras.Sequential([layers.Input((11, 10, 2)), layers.Conv2D(**conv), layers.Flatten(),
                          layers.Dense(5, activation="softmax")])
    _check_step(m, x, y, clip=0.05)
    k = conv["kernel_size"]
    taps = (k * k if isinstance(k, int) else k[0] * k[1]) * 2
    fused = _cpu.conv_dense_per_example_direct(taps, 5, conv["activation"])
    assert fused == (direct == "kernel" and conv["activation"] in ("relu", "linear") and _cpu.simd_level() == "avx512")
    assert seen == ([(21, 5)] if fused else [])
    assert bool(groups) == fused   # never a fused forward thrown away


def test_lstm_falls_back_to_the_per_example_loop():
    x, y = _data((5, 3), n=7)
    m = keras.Sequential([layers.Input((5, 3)), layers.LSTM(6), layers.Dense(4, activation="softmax")])
    _check_step(m, x, y)
    assert not m.optimizer._plan(m).fast


def test_functional_two_inputs():
    a, b = keras.Input((4,)), keras.Input((3,))
    h = layers.concatenate([layers.Dense(5, activation="relu")(a), layers.Dense(2)(b)])
    m = keras.Model([a, b], layers.Dense(4, activation="softmax")(h))
    xa, y = _data((4,), n=9)
    xb, _ = _data((3,), n=9, seed=1)
    _check_step(m, [xa, xb], y)
    assert m.optimizer._plan(m).fast


def test_time_distributed_dense_falls_back():
    x, y = _data((3, 4), n=5)
    m = keras.Sequential([layers.Input((3, 4)), layers.TimeDistributed(layers.Dense(6, activation="relu")),
                          layers.Flatten(), layers.Dense(4, activation="softmax")])
    _check_step(m, x, y)
    assert not m.optimizer._plan(m).fast


def test_functional_shared_layer_falls_back():
    a, b = keras.Input((4,)), keras.Input((4,))
    shared = layers.Dense(5, activation="tanh")
    m = keras.Model([a, b], layers.Dense(3, activation="softmax")(layers.add([shared(a), shared(b)])))
    xa, y = _data((4,), n=6, classes=3)
    xb, _ = _data((4,), n=6, seed=2)
    _check_step(m, [xa, xb], y)


def test_mse_regression():
    x, _ = _data((6,), n=8)
    y = np.random.default_rng(3).standard_normal((8, 2)).astype(np.float32)
    m = keras.Sequential([layers.Input((6,)), layers.Dense(5, activation="sigmoid"), layers.Dense(2)])
    _check_step(m, x, y, loss="mse", clip=0.3)


def _pair(build, seed=0):
    keras.utils.set_random_seed(seed)
    m1 = build()
    m2 = build()
    m2.set_weights(m1.get_weights())
    return m1, m2


def test_no_noise_huge_clip_is_plain_sgd_and_adam():
    def build():
        return keras.Sequential([layers.Input((8, 8, 1)), layers.Conv2D(3, 3, activation="relu"), layers.Flatten(),
                                 layers.Dense(4, activation="softmax")])
    x, y = _data((8, 8, 1), n=16)
    for dp, plain in ((DPSGD(1e6, 0.0, learning_rate=0.05, momentum=0.9), keras.optimizers.SGD(0.05, momentum=0.9)),
                      (make_private(keras.optimizers.Adam(1e-2), 1e6, 0.0), keras.optimizers.Adam(1e-2))):
        m1, m2 = _pair(build)
        m1.compile(optimizer=dp, loss="sparse_categorical_crossentropy")
        m2.compile(optimizer=plain, loss="sparse_categorical_crossentropy")
        for _ in range(3):
            l1 = m1.train_on_batch(x, y)
            l2 = m2.train_on_batch(x, y)
            assert abs(l1 - l2) < 1e-5
        for w1, w2 in zip(m1.get_weights(), m2.get_weights()):
            np.testing.assert_allclose(w1, w2, rtol=1e-5, atol=1e-6)


def test_fit_poisson_batches_and_epsilon_in_history():
    x, y = _data((5,), n=200)
    m = keras.Sequential([layers.Input((5,)), layers.Dense(4, activation="softmax")])
    opt = DPSGD(1.0, 1.1, learning_rate=0.1, seed=1, delta=1e-5)
    m.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    h = m.fit(x, y, batch_size=20, epochs=2, verbose=0)
    eps = h.history["epsilon"]
    assert len(eps) == 2 and 0 < eps[0] < eps[1]
    assert eps[1] == pytest.approx(compute_epsilon(20, 1.1, 20 / 200, 1e-5), rel=1e-9)
    assert opt.epsilon() == pytest.approx(eps[1])
    # fixed batches when asked (epsilon then assumes Poisson sampling, as TF Privacy's tutorials)
    m.compile(optimizer=DPAdam(1.0, 1.1, poisson_sampling=False), loss="sparse_categorical_crossentropy")
    h = m.fit(x, y, batch_size=20, epochs=1, verbose=0)
    assert h.history["epsilon"][0] == pytest.approx(compute_epsilon(10, 1.1, 0.1, 1e-5))


def test_poisson_order_draws_bernoulli_batches():
    from kilnet.privacy.dpsgd import _DPProcess
    opt = DPSGD(1.0, 1.0)
    run = opt._fit_run(1000, 50, [])
    assert run.steps == 20
    order = run.order(np.random.default_rng(0), True)
    sizes = np.diff(run.bounds)
    assert len(sizes) == 20 and sizes.sum() == len(order)
    assert 30 < sizes.mean() < 70 and sizes.std() > 0   # binomial(1000, 0.05) sizes
    for s in range(20):
        a, b = run.begin_step(s)
        assert len(set(order[a:b])) == b - a           # no repeats within a batch
    assert isinstance(run, _DPProcess)
    # every example in every batch with probability 0.05, independently: over 400 batches each
    # example's count is binomial(400, 0.05), mean 20, sd 4.4
    counts = np.zeros(1000)
    for seed in range(20):
        counts += np.bincount(run.order(np.random.default_rng(seed), True), minlength=1000)
    assert abs(counts.mean() - 20) < 0.5 and 3.5 < counts.std() < 5.5 and counts.min() > 2


def test_gaussian_noise_is_standard_normal():
    """The step's noise: one key from the generator, kilnet's normal stream on it (the stream
    itself: tests/test_random.py)."""
    z = gaussian(np.random.default_rng(0), 200001)
    assert z.shape == (200001,) and z.dtype == np.float32
    z = z.astype(np.float64)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    # the normal's quantiles: P(|z| > 1) = 0.3173, P(|z| > 2) = 0.0455, P(|z| > 3) = 0.0027
    for k, p in ((1, 0.3173), (2, 0.0455), (3, 0.0027)):
        assert abs((np.abs(z) > k).mean() - p) < 4 * np.sqrt(p * (1 - p) / z.size)
    # the same generator state gives the same noise; the next draw of it other noise
    rng = np.random.default_rng(0)
    assert np.array_equal(gaussian(rng, 200001), z.astype(np.float32))
    assert abs(np.corrcoef(gaussian(rng, 200001), z)[0, 1]) < 0.01
    out = np.empty(1000, np.float32)
    assert gaussian(np.random.default_rng(1), 1000, out) is out
    with pytest.raises(ValueError, match="contiguous float32"):
        gaussian(np.random.default_rng(1), 1000, np.empty(1000))


@pytest.mark.parametrize("clip,noise", [(0, 1.0), (-1, 1.0), (float("nan"), 1.0), (1.0, -0.5),
                                        (1.0, float("inf"))])
def test_bad_clip_and_noise(clip, noise):
    with pytest.raises(ValueError, match="l2_norm_clip|noise_multiplier"):
        DPSGD(clip, noise)
    with pytest.raises(ValueError, match="l2_norm_clip|noise_multiplier"):
        make_private("adam", clip, noise)


def test_bad_input_other():
    with pytest.raises(TypeError):
        DPSGD("1", 1.0)
    with pytest.raises(ValueError, match="delta"):
        DPSGD(1.0, 1.0, delta=1.5)
    with pytest.raises(ValueError, match="already private"):
        make_private(DPSGD(1.0, 1.0), 1.0, 1.0)
    with pytest.raises(RuntimeError, match="per-example"):
        DPSGD(1.0, 1.0).apply([np.zeros(3, np.float32)], [keras.Variable(np.zeros(3, np.float32))])
    m = keras.Sequential([layers.Input((4,)), layers.Dense(3), layers.BatchNormalization(),
                          layers.Dense(2, activation="softmax")])
    m.compile(optimizer=DPSGD(1.0, 1.0), loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="BatchNormalization"):
        m.train_on_batch(np.ones((4, 4), np.float32), np.array([0, 1, 0, 1]))


def test_save_and_load_keeps_the_optimizer_and_the_privacy_spent(tmp_path):
    x, y = _data((4,), n=40, classes=3)
    m = keras.Sequential([layers.Input((4,)), layers.Dense(3, activation="softmax")])
    m.compile(optimizer=DPAdam(1.0, 1.0, learning_rate=0.01), loss="sparse_categorical_crossentropy")
    m.fit(x, y, batch_size=8, epochs=2, verbose=0)
    m.save(tmp_path / "m.keras")
    m2 = keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(m2.optimizer, keras.privacy.DPOptimizer)
    assert isinstance(m2.optimizer.inner, keras.optimizers.Adam)
    assert m2.optimizer.epsilon() == pytest.approx(m.optimizer.epsilon()) and m.optimizer.epsilon() > 0
    assert m2.optimizer.iterations == m.optimizer.iterations
    for k in ("m", "v"):
        np.testing.assert_allclose(m2.optimizer.state[k], m.optimizer.state[k])
    m2.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert m2.optimizer.epsilon() > m.optimizer.epsilon()


def test_fit_with_empty_poisson_batches():
    x, y = _data((3,), n=30, classes=2)
    m = keras.Sequential([layers.Input((3,)), layers.Dense(2, activation="softmax")])
    opt = DPSGD(1.0, 1.0, learning_rate=0.1, seed=3)
    m.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    h = m.fit(x, y, batch_size=1, epochs=2, verbose=0)   # q = 1/30: about a third of the steps are empty
    assert opt.iterations == 60                          # every step updates, empty ones with noise only
    assert np.isfinite(h.history["loss"]).all() and len(h.history["epsilon"]) == 2
    assert opt.expected_batch_size is None and opt.sample_rate is None   # cleared after fit


def test_add_gaussian_is_gaussian_scaled_and_added():
    from kilnet.privacy.dpsgd import add_gaussian
    g = np.linspace(-1, 1, 10_007).astype(np.float32)
    want = g + gaussian(np.random.default_rng(5), g.size) * np.float32(0.75)
    assert add_gaussian(np.random.default_rng(5), g, np.float32(0.75)) is g
    assert np.array_equal(g, want)
