"""The IDX reader and the keras.datasets-style loaders."""
import gzip
import struct

import numpy as np
import pytest

from kilnet.datasets import fashion_mnist, idx, mnist


def write_idx(path, arr):
    codes = {np.uint8: 0x08, np.int32: 0x0C, np.float32: 0x0D}
    header = bytes([0, 0, codes[arr.dtype.type], arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape)
    data = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    (gzip.open if str(path).endswith(".gz") else open)(path, "wb").write(data)


def test_read_idx_roundtrip(tmp_path):
    for dt in (np.uint8, np.int32, np.float32):
        a = (np.arange(24).reshape(2, 3, 4) * 3).astype(dt)
        for name in ("a.idx", "a.idx.gz"):
            write_idx(tmp_path / name, a)
            np.testing.assert_array_equal(idx.read_idx(tmp_path / name), a)


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        idx.read_idx(tmp_path / "bad")
    write_idx(tmp_path / "t.idx", np.zeros((10, 5), np.uint8))
    data = (tmp_path / "t.idx").read_bytes()
    (tmp_path / "t.idx").write_bytes(data[:-3])
    with pytest.raises(ValueError, match="truncated"):
        idx.read_idx(tmp_path / "t.idx")


def test_search_order_and_missing_message(tmp_path, monkeypatch):
    monkeypatch.setenv("KILNET_DATA", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError) as e:
        mnist.load_data()
    msg = str(e.value)
    assert str(tmp_path) in msg and "/usr/share/datasets/mnist" in msg and ".kilnet/datasets/mnist" in msg
    d = tmp_path / "mnist"
    d.mkdir()
    imgs = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    labels = np.arange(5, dtype=np.uint8)
    for part in ("train", "t10k"):
        write_idx(d / f"{part}-images-idx3-ubyte.gz", imgs)
        write_idx(d / f"{part}-labels-idx1-ubyte.gz", labels)
    (xt, yt), (xe, ye) = mnist.load_data()
    np.testing.assert_array_equal(xt, imgs)
    assert yt.dtype == np.uint8 and xe.shape == (5, 28, 28)


def test_fashion_mnist_real_files():
    try:
        (xt, yt), (xe, ye) = fashion_mnist.load_data()
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    assert xt.shape == (60000, 28, 28) and xt.dtype == np.uint8
    assert yt.shape == (60000,) and yt.dtype == np.uint8
    assert xe.shape == (10000, 28, 28) and ye.shape == (10000,)
    assert set(np.unique(yt)) == set(range(10)) and np.bincount(ye).tolist() == [1000] * 10
