"""Hardening (issue 22): bounded readers and an import that never fails on bad environment
variables."""
import gzip
import os
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest

from kilnet.datasets.idx import read_idx


def _idx(dims, payload=b"", dtype_code=0x08):
    head = bytes([0, 0, dtype_code, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)
    return head + payload


def test_idx_refuses_a_declared_size_over_the_limit_before_reading(tmp_path):
    p = tmp_path / "huge.gz"
    with gzip.open(p, "wb") as f:
        f.write(_idx([2**31 - 1, 2**31 - 1]))
    with pytest.raises(ValueError, match="declares .* bytes"):
        read_idx(p)


def test_idx_gzip_bomb_is_bounded(tmp_path):
    p = tmp_path / "bomb.gz"
    with gzip.open(p, "wb", compresslevel=9) as f:   # declares 1 KB, inflates to 64 MB
        f.write(_idx([1024]))
        zeros = bytes(1 << 20)
        for _ in range(64):
            f.write(zeros)
    assert os.path.getsize(p) < 200_000
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(p)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.perf_counter() - t0 < 2 and peak < 10 << 20


def test_idx_round_trip_and_truncation(tmp_path):
    x = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / "ok"
    p.write_bytes(_idx(x.shape, x.tobytes()))
    np.testing.assert_array_equal(read_idx(p), x)
    p.write_bytes(_idx(x.shape, x.tobytes()[:-1]))
    with pytest.raises(ValueError, match="expected 24 data bytes"):
        read_idx(p)
    p.write_bytes(b"\x00\x00\x08\x03\x00")
    with pytest.raises(ValueError, match="truncated IDX header"):
        read_idx(p)


@pytest.mark.parametrize("env", [{"KILNET_NUM_THREADS": ""}, {"KILNET_NUM_THREADS": "abc"},
                                 {"KILNET_NUM_THREADS": "-3"}, {"KILNET_NUM_THREADS": "99999999999"},
                                 {"KILNET_SIMD": "avx9"}, {"KILNET_DATA": "/nonexistent/dir"}])
def test_bad_environment_warns_and_imports(env):
    code = ("import warnings; warnings.simplefilter('always');\n"
            "import kilnet\n"
            "from kilnet.datasets.idx import search_dirs; search_dirs('x')\n"
            "print('threads', kilnet.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, **env}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "RuntimeWarning" in out.stderr and list(env)[0] in out.stderr
    assert "threads" in out.stdout


@pytest.mark.parametrize("layer", ["dense", "conv", "rnn"])
def test_relu_propagates_nan(layer):
    """ReLU maps NaN to NaN in every kernel (as IEEE and PyTorch): a model with a NaN weight
    reports a NaN loss and TerminateOnNaN stops it."""
    import kilnet
    from kilnet import layers
    from kilnet.backend import cpu
    x = np.array([np.nan, -1.0, 2.0, 0.0], np.float32)
    y = np.empty_like(x)
    cpu.activation_forward("relu", x, y)
    assert np.isnan(y[0]) and list(y[1:]) == [0.0, 2.0, 0.0]
    kilnet.utils.set_random_seed(0)
    if layer == "dense":
        m = kilnet.Sequential([layers.Input((4,)), layers.Dense(3, activation="relu"), layers.Dense(2, activation="softmax")])
        data = np.ones((8, 4), np.float32)
    elif layer == "conv":
        m = kilnet.Sequential([layers.Input((5, 5, 1)), layers.Conv2D(2, 3, activation="relu"), layers.Flatten(),
                               layers.Dense(2, activation="softmax")])
        data = np.ones((8, 5, 5, 1), np.float32)
    else:
        m = kilnet.Sequential([layers.Input((3, 4)), layers.SimpleRNN(3, activation="relu"),
                               layers.Dense(2, activation="softmax")])
        data = np.ones((8, 3, 4), np.float32)
    w = m.get_weights()
    w[0] = w[0].copy()
    w[0].flat[0] = np.nan
    m.layers[0].variables[0].assign(w[0])   # set_weights refuses NaN: write the Variable itself
    assert np.isnan(m.predict(data, verbose=0)).all()
    m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    h = m.fit(data, np.zeros(8), epochs=3, verbose=0, callbacks=[kilnet.callbacks.TerminateOnNaN()])
    assert len(h.history["loss"]) == 1 and np.isnan(h.history["loss"][0])


def test_set_weights_checks_finiteness_and_fit_arguments():
    import kilnet
    from kilnet import layers
    m = kilnet.Sequential([layers.Input((3,)), layers.Dense(2)])
    w = m.get_weights()
    bad = [w[0].copy(), w[1]]
    bad[0][0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        m.set_weights(bad)
    np.testing.assert_array_equal(m.get_weights()[0], w[0])   # nothing written
    m.set_weights(bad, allow_nonfinite=True)
    assert np.isinf(m.get_weights()[0][0, 0])
    m.set_weights(w)
    m.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((4, 3), np.float32), np.ones((4, 2), np.float32)
    with pytest.raises(ValueError, match="validation_freq"):
        m.fit(x, y, validation_freq=0, validation_split=0.5, verbose=0)
    with pytest.raises(ValueError, match="initial_epoch"):
        m.fit(x, y, initial_epoch=-3, verbose=0)


def test_set_weights_during_predict_in_another_thread_refuses():
    import threading
    import kilnet
    from kilnet import layers
    m = kilnet.Sequential([layers.Input((3,)), layers.Dense(2)])
    started, release = threading.Event(), threading.Event()

    def reader():
        with m._guard("predict"):   # what predict holds while it runs
            started.set()
            release.wait(10)
    t = threading.Thread(target=reader)
    t.start()
    started.wait(10)
    try:
        with pytest.raises(RuntimeError, match="in use in another thread"):
            m.set_weights(m.get_weights())
    finally:
        release.set()
        t.join()
    m.set_weights(m.get_weights())   # afterwards it runs


def test_cli_refuses_bad_counts_and_image_bombs(tmp_path):
    from PIL import Image
    from kilnet import cli
    for argv in (["train", "--limit", "-5"], ["predict", "m.h5", "x.png", "--top", "-1"]):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2
    bomb = tmp_path / "bomb.png"
    Image.new("L", (10000, 10000)).save(bomb)   # ~100 KB on disk, 100 M pixels declared
    assert os.path.getsize(bomb) < 1_000_000
    with pytest.raises(ValueError, match="decompression bomb|exceeds limit"):
        cli.load_image(str(bomb), (28, 28, 1))
