"""Saving and loading: the Keras .h5 layout, atomic writes, and refusing bad or hostile files."""
import json
import os

import h5py
import numpy as np
import pytest

from kilnet.io import ModelFileError
from kilnet.layers import Conv2D, Dense, Flatten
from kilnet.models import Sequential, load_model
from kilnet.utils import set_random_seed


@pytest.fixture
def saved(tmp_path):
    set_random_seed(0)
    m = Sequential([Conv2D(2, 3, activation="relu", input_shape=(6, 6, 1)), Flatten(), Dense(3, activation="softmax")])
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x = np.random.default_rng(0).uniform(size=(20, 6, 6, 1))
    m.fit(x, np.arange(20) % 3, epochs=1, verbose=0)
    p = tmp_path / "m.h5"
    m.save(p)
    return m, p, x


def test_keras_layout(saved):
    m, p, _ = saved
    with h5py.File(p, "r") as f:
        cfg = json.loads(f.attrs["model_config"])
        assert cfg["class_name"] == "Sequential"
        layers = cfg["config"]["layers"]
        assert [l["class_name"] for l in layers] == ["InputLayer", "Conv2D", "Flatten", "Dense"]
        assert layers[0]["config"]["batch_shape"] == [None, 6, 6, 1]
        assert layers[1]["config"]["kernel_initializer"]["class_name"] == "GlorotUniform"
        mw = f["model_weights"]
        assert [n.decode() for n in mw.attrs["layer_names"]] == ["conv2d", "flatten", "dense"] or \
            len(mw.attrs["layer_names"]) == 3
        conv = m.layers[0].name
        names = [n.decode() for n in mw[conv].attrs["weight_names"]]
        assert names == [f"{m.name}/{conv}/kernel", f"{m.name}/{conv}/bias"]
        np.testing.assert_array_equal(mw[conv][names[0]][()], m.layers[0].kernel)
        assert len(mw[m.layers[1].name].attrs["weight_names"]) == 0
        tc = json.loads(f.attrs["training_config"])
        assert tc["optimizer_config"]["class_name"] == "Adam" and tc["metrics"] == ["accuracy"]
        assert f"{m.optimizer.name}/iteration" in f["optimizer_weights"]


def test_roundtrip_predictions_and_config(saved):
    m, p, x = saved
    m2 = load_model(p)
    np.testing.assert_array_equal(m.predict(x), m2.predict(x))
    assert [l.name for l in m2.layers] == [l.name for l in m.layers]
    assert m2.layers[0].get_config() == m.layers[0].get_config()
    m3 = load_model(p, compile=False)
    assert m3.optimizer is None
    np.testing.assert_array_equal(m.predict(x), m3.predict(x))


def test_atomic_save_keeps_old_file_on_failure(saved, monkeypatch):
    m, p, _ = saved
    before = p.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr("kilnet.saving.legacy_h5._write_weights", boom)
    with pytest.raises(OSError, match="disk full"):
        m.save(p)
    assert p.read_bytes() == before
    assert [f for f in os.listdir(p.parent) if f.endswith(".tmp")] == []


def test_missing_and_corrupt_files(tmp_path, saved):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_model(tmp_path / "nope.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"this is not hdf5" * 10)
    with pytest.raises(ModelFileError, match="not a readable HDF5"):
        load_model(junk)
    _, p, _ = saved
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(p.read_bytes()[: os.path.getsize(p) // 2])
    with pytest.raises(ModelFileError):
        load_model(trunc)


def _copy_with(tmp_path, src, edit):
    dst = tmp_path / "edited.h5"
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


def test_refuses_unknown_layer_and_code(tmp_path, saved):
    _, p, _ = saved

    def lam(f):
        cfg = json.loads(f.attrs["model_config"])
        cfg["config"]["layers"][2]["class_name"] = "Lambda"
        cfg["config"]["layers"][2]["config"]["function"] = "__import__('os').system('touch /tmp/pwned')"
        f.attrs["model_config"] = json.dumps(cfg)
    with pytest.raises(ModelFileError, match="unsupported layer type 'Lambda'"):
        load_model(_copy_with(tmp_path, p, lam))


def test_refuses_shape_mismatch_nonfinite_links(tmp_path, saved):
    m, p, _ = saved
    conv = m.layers[0].name
    wname = f"{m.name}/{conv}/kernel"

    def reshape(f):
        g = f["model_weights"][conv]
        del g[wname]
        g.create_dataset(wname, data=np.zeros((3, 3, 1, 5), np.float32))
    with pytest.raises(ModelFileError, match=r"has shape \(3, 3, 1, 5\), the architecture needs \(3, 3, 1, 2\)"):
        load_model(_copy_with(tmp_path, p, reshape))

    def nan(f):
        f["model_weights"][conv][wname][0, 0, 0, 0] = np.nan
    with pytest.raises(ModelFileError, match="NaN"):
        load_model(_copy_with(tmp_path, p, nan))

    def ext_link(f):
        g = f["model_weights"][conv]
        del g[wname]
        g[wname] = h5py.ExternalLink("/etc/passwd", "/x")
    with pytest.raises(ModelFileError, match="ExternalLink"):
        load_model(_copy_with(tmp_path, p, ext_link))

    def soft_link(f):
        g = f["model_weights"][conv]
        del g[wname]
        g[wname] = h5py.SoftLink(f"/model_weights/{conv}/{m.name}/{conv}/bias")
    with pytest.raises(ModelFileError, match="SoftLink"):
        load_model(_copy_with(tmp_path, p, soft_link))


def test_refuses_bad_json_and_missing_config(tmp_path, saved):
    _, p, _ = saved

    def bad_json(f):
        f.attrs["model_config"] = "{not json"
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(_copy_with(tmp_path, p, bad_json))

    def no_cfg(f):
        del f.attrs["model_config"]
    with pytest.raises(ModelFileError, match="no 'model_config'"):
        load_model(_copy_with(tmp_path, p, no_cfg))

    def bad_arg(f):
        cfg = json.loads(f.attrs["model_config"])
        cfg["config"]["layers"][3]["config"]["units"] = -5
        f.attrs["model_config"] = json.dumps(cfg)
    with pytest.raises(ModelFileError, match="invalid or unsupported config"):
        load_model(_copy_with(tmp_path, p, bad_arg))


def test_save_unbuilt_and_overwrite(tmp_path, saved):
    with pytest.raises(ValueError, match="not built"):
        Sequential([Dense(2)]).save(tmp_path / "x.h5")
    m, p, _ = saved
    with pytest.raises(FileExistsError):
        m.save(p, overwrite=False)


def test_load_weights_into_fresh_model(saved):
    m, p, x = saved
    m2 = Sequential([Conv2D(2, 3, activation="relu", input_shape=(6, 6, 1)), Flatten(), Dense(3, activation="softmax")])
    m2.load_weights(p)
    np.testing.assert_array_equal(m.predict(x), m2.predict(x))


def test_refuses_virtual_and_absurd_datasets(tmp_path, saved):
    m, p, _ = saved
    conv = m.layers[0].name
    wname = f"{m.name}/{conv}/kernel"

    def virtual(f):
        g = f["model_weights"][conv]
        del g[wname]
        src = tmp_path / "src.h5"
        with h5py.File(src, "w") as s:
            s.create_dataset("k", data=np.zeros((3, 3, 1, 2), np.float32))
        layout = h5py.VirtualLayout(shape=(3, 3, 1, 2), dtype="f4")
        layout[...] = h5py.VirtualSource(str(src), "k", shape=(3, 3, 1, 2))
        g.create_virtual_dataset(wname, layout)
    with pytest.raises(ModelFileError, match="external or virtual"):
        load_model(_copy_with(tmp_path, p, virtual))

    def huge(f):   # declares 10^12 elements; chunked and never written, so the file stays small
        g = f["model_weights"][conv]
        del g[wname]
        g.create_dataset(wname, shape=(10**6, 10**6), dtype="f4", chunks=(1, 1024))
    dst = _copy_with(tmp_path, p, huge)
    assert os.path.getsize(dst) < 10**6
    with pytest.raises(ModelFileError, match="claims 1000000000000 elements"):
        load_model(dst)

    def external(f):   # raw external storage: the data would come from another file
        g = f["model_weights"][conv]
        del g[wname]
        raw = tmp_path / "raw.bin"
        raw.write_bytes(np.zeros(18, np.float32).tobytes())
        g.create_dataset(wname, shape=(3, 3, 1, 2), dtype="f4", external=[(str(raw), 0, 72)])
    with pytest.raises(ModelFileError, match="external or virtual"):
        load_model(_copy_with(tmp_path, p, external))
