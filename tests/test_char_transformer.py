"""The character Transformer app (kilnet.apps.char_transformer, `kilnet train --model
char-transformer`): data from the standard library, a small model that learns, sampling.
benchmarks/bench_char_transformer.py compares the full-size model's curve with PyTorch's."""
import numpy as np

import kilnet
from kilnet.apps import char_transformer as ct


def test_data_windows_and_encoding():
    text = ct.stdlib_text(20_000)
    assert 0 < len(text) <= 20_000
    ids = ct.encode(text + "é".encode())
    assert ids.max() < ct.VOCAB and ids[-1] == ord("?")
    x, y = ct.windows(ids, 16, 5, np.random.default_rng(0))
    assert x.shape == y.shape == (5, 16)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    assert ct.decode(ct.encode(b"def f():")) == "def f():"


def test_small_model_learns_and_samples():
    kilnet.utils.set_random_seed(0)
    ids = ct.encode(ct.stdlib_text(60_000))
    tr, va = ct.split(ids)
    m = ct.build_model(context=16, width=32, heads=2, blocks=1, learning_rate=3e-3)
    assert [type(l).__name__ for l in m.layers][:2] == ["InputLayer", "TokenAndPosition"]
    before = ct.bits_per_char(m, va, 16, n=64)
    x, y = ct.windows(tr, 16, 32 * 60, np.random.default_rng(1))
    m.fit(x, y, batch_size=32, verbose=0)
    after = ct.bits_per_char(m, va, 16, n=64)
    assert before > 6.5 and after < before - 2.0, (before, after)
    text = ct.sample(m, "def ", length=20, temperature=0.5)
    assert text.startswith("def ") and len(text) == 24
