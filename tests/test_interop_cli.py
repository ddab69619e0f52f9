"""Array interop (torch tensors, DLPack, lists) and the predict/plot commands."""
import subprocess
import sys

import numpy as np
import pytest

from kilnet.cli import canonical_model
from kilnet.layers import Dense
from kilnet.models import Sequential


class DLPackOnly:
    """An object offering only the DLPack protocol (no __array__)."""

    def __init__(self, a):
        self._a = a

    def __dlpack__(self, *args, **kwargs):
        return self._a.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self._a.__dlpack_device__()

    def __len__(self):
        return len(self._a)


def test_array_likes_are_accepted():
    m = Sequential([Dense(3, activation="softmax", input_shape=(4,))])
    m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    ref = m.predict(x)
    np.testing.assert_array_equal(m.predict(x.tolist()), ref)
    np.testing.assert_array_equal(m.predict(DLPackOnly(x)), ref)
    m.fit(DLPackOnly(x), DLPackOnly(np.arange(10) % 3), verbose=0)
    with pytest.raises(TypeError, match="array-like"):
        m.predict(object())


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    m = Sequential([Dense(3, activation="softmax", input_shape=(4,))])
    m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x = torch.randn(10, 4)
    out = m.predict(x)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, m.predict(x.numpy()))
    m.fit(x, torch.arange(10) % 3, verbose=0)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    m = canonical_model()
    m.fit(np.random.default_rng(0).uniform(size=(64, 28, 28, 1)), np.arange(64) % 10, verbose=0)
    path = tmp_path_factory.mktemp("m") / "m.h5"
    m.save(path)
    return m, path


def test_cli_predict_images(saved_model, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    m, path = saved_model
    rng = np.random.default_rng(1)
    a = (rng.uniform(size=(28, 28)) * 255).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(a).resize((56, 56)).convert("RGB").save(tmp_path / "b.jpg")
    r = subprocess.run([sys.executable, "-m", "kilnet", "predict", str(path), str(tmp_path / "a.png"),
                        str(tmp_path / "b.jpg"), "--labels", "fashion-mnist", "--top", "2"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(str(tmp_path / "a.png"))
    p = m.predict((a / 255.0).reshape(1, 28, 28, 1))[0]
    best = int(p.argmax())
    from kilnet.cli import LABEL_SETS
    assert f"{LABEL_SETS['fashion-mnist'][best]} {p[best]:.3f}" in lines[0]
    bad = subprocess.run([sys.executable, "-m", "kilnet", "predict", str(path), str(tmp_path / "nope.png")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "cannot read image" in bad.stderr


def test_cli_help_documents_options():
    r = subprocess.run([sys.executable, "-m", "kilnet", "train", "--help"], capture_output=True, text=True, timeout=60)
    for opt in ("--epochs", "--batch-size", "--threads", "--out", "--plot", "--model", "--seed"):
        assert opt in r.stdout


def test_plot_history(tmp_path):
    pytest.importorskip("matplotlib")
    from kilnet.cli import plot_history
    out = tmp_path / "c.png"
    plot_history({"loss": [1.0, 0.5], "accuracy": [0.6, 0.8], "val_loss": [1.1, 0.7], "val_accuracy": [0.5, 0.7]},
                 out, "t")
    assert out.read_bytes()[:4] == b"\x89PNG"
