"""LIME (kilnet.explain.lime): tabular and image, the surrogate, SLIC, the lime package."""
import time

import numpy as np
import pytest

from kilnet import explain
from kilnet.layers import Dense
from kilnet.models import Sequential
from kilnet.utils import set_random_seed

TRUE_W = np.array([2.0, 0.0, -3.0, 0.0, 0.5, 0.0])


class Linear:
    """A model object whose predict is linear: the ground truth LIME must recover."""
    def predict(self, a):
        return np.asarray(a, np.float64) @ TRUE_W + 1.0


@pytest.fixture(scope="module")
def table():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(2000, 6)) * np.array([1, 2, 1, 3, 0.5, 1]) + 3).astype(np.float32)


def test_weighted_ridge_matches_closed_form():
    rng = np.random.default_rng(1)
    X, w = rng.normal(size=(300, 4)), rng.uniform(0.1, 1, 300)
    y = X @ np.array([1.0, -2, 0, 3]) + 0.5 + 0.1 * rng.normal(size=300)
    coef, b, r2 = explain.weighted_ridge(X, y, w, alpha=1.0)
    # normal equations of sum w (y - Xc - b)^2 + |c|^2 with the intercept unpenalised
    A = np.c_[X, np.ones(300)]
    P = np.diag([1.0] * 4 + [0.0])
    sol = np.linalg.solve(A.T @ (w[:, None] * A) + P, A.T @ (w * y))
    np.testing.assert_allclose(np.r_[coef, b], sol, rtol=1e-9, atol=1e-10)
    assert 0.99 < r2 <= 1.0
    try:
        from sklearn.linear_model import Ridge
    except ImportError:
        return
    r = Ridge(alpha=1.0).fit(X, y, sample_weight=w)
    np.testing.assert_allclose(coef, r.coef_, rtol=1e-9)
    assert r2 == pytest.approx(r.score(X, y, sample_weight=w))


def test_tabular_recovers_linear_ground_truth(table):
    e = explain.lime(Linear(), table[7], training_data=table, num_samples=1000, seed=0)
    std = table.std(0)
    # weights are per standard deviation; lime's ridge penalty (alpha=1) shrinks them a little
    np.testing.assert_allclose(e.weights / std, TRUE_W, atol=0.1 * np.abs(TRUE_W).max())
    assert set(e.top(3)) == {0, 2, 4}
    assert e.score > 0.999
    assert e.local_prediction == pytest.approx(e.prediction, rel=0.05)
    # without the penalty a linear model is fitted exactly
    e = explain.lime(Linear(), table[7], training_data=table, num_samples=1000, seed=0, alpha=0.0)
    np.testing.assert_allclose(e.weights / std, TRUE_W, atol=1e-6)
    assert e.local_prediction == pytest.approx(e.prediction, rel=1e-6)
    assert e.prediction == pytest.approx(float(Linear().predict(table[7:8])[0]), rel=1e-6)
    # num_features keeps the strongest ones only
    e2 = explain.lime(Linear(), table[7], training_data=table, num_features=2, seed=0)
    assert set(np.nonzero(e2.weights)[0]) == {0, 2}


def test_tabular_kilnet_model_recovers_used_features(table):
    """A Dense classifier trained on a label that uses features 0 and 3 only."""
    set_random_seed(0)
    x = (table - table.mean(0)) / table.std(0)
    y = (x[:, 0] - x[:, 3] > 0).astype(np.int64)
    model = Sequential([Dense(16, activation="relu", input_shape=(6,)), Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=10, verbose=0)
    assert model.evaluate(x, y, verbose=0)[1] > 0.9
    hits = 0
    for i in range(5):
        e = explain.lime(model, x[i], training_data=x, num_samples=1000, target=1, seed=i)
        hits += set(e.top(2)) == {0, 3}
        assert e.weights[0] > 0 > e.weights[3]
    assert hits >= 4
    # x as a batch of one, target by default = the predicted class
    e = explain.lime(model, x[:1], training_data=x, seed=0)
    assert e.target == int(model.predict(x[:1]).argmax())


def test_tabular_without_training_data_samples_around_x():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    e = explain.lime(Linear(), x, seed=0, alpha=0.0)
    np.testing.assert_allclose(e.weights, TRUE_W, atol=1e-6)     # std 1: weights are slopes
    e2 = explain.lime(Linear(), x, feature_mean=0.0, feature_std=2.0, seed=0, alpha=0.0)
    np.testing.assert_allclose(e2.weights / 2, TRUE_W, atol=1e-6)
    assert set(explain.lime(Linear(), x, feature_mean=0.0, feature_std=2.0, seed=0).top(3)) == {0, 2, 4}


def test_tabular_categorical_feature(table):
    """Column 5 is a category in {0, 1, 2}; the model adds 4 when it is 2."""
    rng = np.random.default_rng(2)
    td = table.copy()
    td[:, 5] = rng.integers(0, 3, len(td))
    f = lambda a: a[:, 0] + 4.0 * (a[:, 5] == 2)                    # noqa: E731
    x = td[0].copy()
    x[5] = 2
    e = explain.lime(f, x, training_data=td, categorical_features=[5], seed=0, alpha=1e-3)
    assert list(e.top(2)) == [5, 0]
    assert e.weights[5] == pytest.approx(4.0, rel=0.05)       # keeping x's category is worth +4
    x[5] = 1
    e = explain.lime(f, x, training_data=td, categorical_features=[5], seed=0, alpha=1e-3)
    assert e.weights[5] == pytest.approx(-2.0, rel=0.15)      # vs. the others: 2 with prob 1/2
    with pytest.raises(ValueError, match="training_data"):
        explain.lime(f, x, categorical_features=[5])
    with pytest.raises(ValueError, match="out of range"):
        explain.lime(f, x, training_data=td, categorical_features=[9])


def test_same_seed_same_explanation(table):
    a = explain.lime(Linear(), table[0], training_data=table, seed=3)
    b = explain.lime(Linear(), table[0], training_data=table, seed=3)
    np.testing.assert_array_equal(a.weights, b.weights)


def test_slic_segments_are_connected():
    rng = np.random.default_rng(0)
    img = np.zeros((28, 28))
    img[6:22, 8:20] = 1.0                    # a bright block on a dark ground
    img += 0.02 * rng.normal(size=img.shape)
    seg = explain.slic(img, n_segments=30)
    assert seg.shape == (28, 28) and seg.min() == 0
    k = seg.max() + 1
    assert 15 <= k <= 60
    assert (np.bincount(seg.ravel()) > 0).all()
    # every label one 4-connected region
    from kilnet.explain import _connected_relabel
    np.testing.assert_array_equal(np.unique(_connected_relabel(seg, 1)).size, k)
    # superpixels follow the block's edge: none straddles it by much
    inside = img > 0.5
    frac = np.bincount(seg.ravel(), inside.ravel(), k) / np.bincount(seg.ravel(), minlength=k)
    assert ((frac < 0.2) | (frac > 0.8)).mean() > 0.85
    rgb = explain.slic(np.stack([img, 1 - img, img], -1), n_segments=30)
    assert rgb.shape == (28, 28)


@pytest.fixture(scope="module")
def fashion():
    from kilnet.cli import canonical_model
    from kilnet.datasets import fashion_mnist
    try:
        (xt, yt), (xe, ye) = fashion_mnist.load_data()
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST not installed")
    set_random_seed(0)
    model = canonical_model()
    model.fit((xt[:3000] / 255.0).reshape(-1, 28, 28, 1), yt[:3000], epochs=1, verbose=0)
    return model, (xe[:6] / 255.0).reshape(-1, 28, 28, 1).astype(np.float32)


def test_image_top_superpixels_overlap_integrated_gradients(fashion):
    """The 5 top superpixels hold more of the positive IG attribution than 5 random ones would
    (k/K of it on average)."""
    model, x = fashion
    ig = explain.integrated_gradients(model, x, steps=32)
    captured, chance, times = [], [], []
    for i in range(len(x)):
        t0 = time.perf_counter()
        e = explain.lime(model, x[i], mode="image", num_samples=1000, seed=i)
        times.append(time.perf_counter() - t0)
        assert e.segments.shape == (28, 28) and e.weights.shape == (e.segments.max() + 1,)
        assert e.target == int(model.predict(x[i:i + 1]).argmax())
        pos = np.clip(ig[i, ..., 0], 0, None)
        captured.append(pos[e.mask(5)].sum() / pos.sum())
        chance.append(5 / e.weights.size)
        assert e.heatmap().shape == (28, 28)
    assert np.mean(captured) > 2 * np.mean(chance), (captured, chance)
    assert sum(c > ch for c, ch in zip(captured, chance)) >= len(x) - 1
    print(f"LIME image, 1000 samples: median {np.median(times):.3f} s per image")


def test_image_options(fashion):
    model, x = fashion
    seg = np.arange(28 * 28).reshape(28, 28) // 98          # 8 horizontal bands
    e = explain.lime(model, x[0, ..., 0][..., None], mode="image", segments=seg, num_samples=200,
                     fill_value="mean", seed=0, batch_size=64)
    assert e.weights.shape == (8,)
    np.testing.assert_array_equal(e.segments, seg)
    e2 = explain.lime(model, x[0], mode="image", num_samples=100, target=3, seed=0)
    assert e2.target == 3
    try:
        import skimage  # noqa: F401
        e4 = explain.lime(model, x[0], mode="image", num_samples=100, segmenter="skimage", n_segments=30,
                          compactness=0.1, seed=0)
        assert e4.weights.shape == (e4.segments.max() + 1,) and e4.segments.shape == (28, 28)
    except ImportError:
        pass
    # a batch of one, and an (H, W) image for an (H, W, 1) model, give the same explanation
    for xi in (x[:1], x[0, ..., 0]):
        e3 = explain.lime(model, xi, mode="image", num_samples=100, target=3, seed=0)
        np.testing.assert_array_equal(e3.weights, e2.weights)


def test_bad_input(table):
    with pytest.raises(ValueError, match="mode"):
        explain.lime(Linear(), table[0], mode="text")
    with pytest.raises(ValueError, match="num_samples"):
        explain.lime(Linear(), table[0], num_samples=1)
    with pytest.raises(ValueError, match="features"):
        explain.lime(Linear(), table[0], training_data=table[:, :3])
    with pytest.raises(ValueError, match="one row"):
        explain.lime(Linear(), table[:3])
    with pytest.raises(ValueError, match="NaN"):
        explain.lime(Linear(), np.full(6, np.nan))
    with pytest.raises(ValueError, match="out of range"):
        explain.lime(lambda a: np.c_[a[:, 0], a[:, 1]], table[0], target=2)
    with pytest.raises(ValueError, match="segments"):
        explain.lime(Linear(), np.zeros((4, 4)), mode="image", segments=np.zeros((3, 3), int))
    with pytest.raises(ValueError, match="fill_value"):
        explain.lime(Linear(), np.zeros((4, 4)), mode="image", fill_value="blur")
    with pytest.raises(ValueError, match="kernel_width"):
        explain.lime(Linear(), table[0], kernel_width=0)
    with pytest.raises(ValueError, match="num_features"):
        explain.lime(Linear(), table[0], num_features=0)
    with pytest.raises(ValueError, match="segmenter"):
        explain.lime(Linear(), np.zeros((4, 4)), mode="image", segmenter="quickshift")
    with pytest.raises(TypeError, match="model"):
        explain.lime(object(), table[0])


def test_interop_lime_package_tabular(table):
    lime_tabular = pytest.importorskip("lime.lime_tabular")
    f = lambda a: np.c_[-Linear().predict(a), Linear().predict(a)]       # noqa: E731
    theirs = lime_tabular.LimeTabularExplainer(table, discretize_continuous=False, mode="regression",
                                               random_state=0)
    exp = theirs.explain_instance(table[3], lambda a: Linear().predict(a), num_features=6, num_samples=2000)
    tw = np.zeros(6)
    for j, v in exp.as_map()[1]:
        tw[j] = v
    ours = explain.lime(f, table[3], training_data=table, num_samples=2000, target=1, seed=0)
    np.testing.assert_allclose(ours.weights, tw, atol=0.05 * np.abs(tw).max())
    assert list(ours.top(3)) == list(np.argsort(-np.abs(tw))[:3])


def test_interop_lime_package_image(fashion):
    lime_image = pytest.importorskip("lime.lime_image")
    model, x = fashion
    img = x[1]
    seg = explain.slic(img, 50)
    f = lambda a: model.predict(a[..., :1].astype(np.float32), verbose=0)       # noqa: E731
    exp = lime_image.LimeImageExplainer(random_state=0).explain_instance(
        np.repeat(img, 3, -1).astype(np.float64), f, top_labels=1, hide_color=0, num_samples=1000,
        segmentation_fn=lambda _: seg)
    label = exp.top_labels[0]
    tw = np.zeros(seg.max() + 1)
    for j, v in exp.local_exp[label]:
        tw[j] = v
    ours = explain.lime(model, img, mode="image", segments=seg, num_samples=1000, seed=0)
    assert ours.target == label
    assert np.corrcoef(ours.weights, tw)[0, 1] > 0.8
    assert len(set(ours.top(5, positive_only=True)) & set(np.argsort(-tw)[:5])) >= 3


def test_cli_explain_lime_writes_png(tmp_path, fashion):
    pytest.importorskip("matplotlib")
    import subprocess
    import sys
    model, _ = fashion
    path = tmp_path / "m.h5"
    model.save(path)
    out = tmp_path / "lime.png"
    r = subprocess.run([sys.executable, "-m", "kilnet", "explain", str(path), "--method", "lime", "--index", "3",
                        "--samples", "300", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "lime for" in r.stdout and "superpixels" in r.stdout
