"""A .keras archive is untrusted input: zip bombs, path tricks, duplicate members, oversized
or deeply nested config.json, code-carrying or unknown classes and module/registered_name
fields that try to import Python all raise ModelFileError before anything runs, and nothing
outside the archive is read or written."""
import io
import json
import os
import sys
import zipfile

import h5py
import numpy as np
import pytest

import kilnet
from kilnet import layers as L
from kilnet.models import Sequential, load_model
from kilnet.saving import ModelFileError, keras_archive


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """The members of a valid archive: {name: bytes}."""
    folder = tmp_path_factory.mktemp("good")
    m = Sequential([kilnet.Input((4,)), L.Dense(3, activation="relu", name="d1"), L.Dense(2, name="d2")])
    m.compile("adam", "mse")
    m.fit(np.ones((4, 4), "f"), np.ones((4, 2), "f"), verbose=0)
    m.save(folder / "good.keras")
    with zipfile.ZipFile(folder / "good.keras") as z:
        return {n: z.read(n) for n in z.namelist()}


def write_zip(path, members, compression=zipfile.ZIP_STORED):
    """members: list of (name, bytes); duplicates and odd names are written as given."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # zipfile warns about duplicate names
        with zipfile.ZipFile(path, "w", compression=compression) as z:
            for name, data in members:
                z.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return path


def with_config(good, edit):
    cfg = json.loads(good["config.json"])
    edit(cfg)
    return [("metadata.json", good["metadata.json"]), ("config.json", json.dumps(cfg).encode()),
            ("model.weights.h5", good["model.weights.h5"])]


def refuse(path, match, **kw):
    before = set(os.listdir(os.path.dirname(path)))
    with pytest.raises(ModelFileError, match=match):
        load_model(path, **kw)
    assert set(os.listdir(os.path.dirname(path))) == before   # nothing written next to it


def test_good_archive_loads(tmp_path, good):
    p = write_zip(tmp_path / "ok.keras", list(good.items()))
    assert load_model(p).predict(np.ones((1, 4), "f"), verbose=0).shape == (1, 2)


def test_zip_bomb_refused_before_inflating(tmp_path, good, monkeypatch):
    # a config.json that inflates to 40 MiB from a few KiB: refused on its declared size
    bomb = write_zip(tmp_path / "bomb.keras", [("metadata.json", good["metadata.json"]),
                                               ("config.json", b" " * (40 << 20)),
                                               ("model.weights.h5", good["model.weights.h5"])], zipfile.ZIP_DEFLATED)
    assert os.path.getsize(bomb) < 1 << 20
    inflated = []
    real_open = zipfile.ZipFile.open

    def spy(self, name, *a, **k):
        inflated.append(getattr(name, "filename", name))
        return real_open(self, name, *a, **k)
    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    refuse(str(bomb), "config.json.*declares")
    assert inflated == []   # refused on the declared sizes, before reading any member
    # the weights member: per-member cap, total cap and compression ratio
    monkeypatch.setattr(zipfile.ZipFile, "open", real_open)
    big = write_zip(tmp_path / "big.keras", [("config.json", good["config.json"]),
                                             ("model.weights.h5", b"\0" * (3 << 20))], zipfile.ZIP_DEFLATED)
    monkeypatch.setitem(keras_archive.LIMITS, "weights_bytes", 2 << 20)
    refuse(str(big), "model.weights.h5.*declares")
    monkeypatch.setitem(keras_archive.LIMITS, "weights_bytes", 16 << 30)
    monkeypatch.setitem(keras_archive.LIMITS, "ratio", 100)
    refuse(str(big), "inflates.*zip bomb")
    monkeypatch.setitem(keras_archive.LIMITS, "ratio", 10_000)
    monkeypatch.setitem(keras_archive.LIMITS, "total_bytes", 1 << 20)
    refuse(str(big), "declares .* bytes in all")


@pytest.mark.parametrize("name", ["../evil.txt", "/etc/evil", "assets/../../evil", "a\\..\\evil", "C:/evil",
                                  "assets/x\ty", "./config.json"])
def test_unsafe_member_names(tmp_path, good, name):
    p = write_zip(tmp_path / "names.keras", list(good.items()) + [(name, b"x")])
    refuse(str(p), "unsafe name")
    assert not (tmp_path.parent / "evil.txt").exists()


def test_duplicate_and_unexpected_members(tmp_path, good):
    dup = write_zip(tmp_path / "dup.keras", list(good.items()) + [("config.json", b"{}")])
    refuse(str(dup), "appears twice")
    extra = write_zip(tmp_path / "extra.keras", list(good.items()) + [("payload.py", b"import os")])
    refuse(str(extra), "unexpected archive member")
    many = write_zip(tmp_path / "many.keras", list(good.items()) + [(f"assets/{i}", b"") for i in range(100)])
    refuse(str(many), "members")
    noconf = write_zip(tmp_path / "noconf.keras", [("model.weights.h5", good["model.weights.h5"])])
    refuse(str(noconf), "no config.json")


def test_oversized_and_deep_config(tmp_path, good, monkeypatch):
    deep = b"[" * 5000 + b"]" * 5000
    p = write_zip(tmp_path / "deep.keras", [("config.json", deep), ("model.weights.h5", good["model.weights.h5"])])
    refuse(str(p), "nests")
    cfg = json.loads(good["config.json"])
    cfg["config"]["padding"] = "x" * (2 << 20)
    p2 = write_zip(tmp_path / "large.keras", [("config.json", json.dumps(cfg).encode()),
                                              ("model.weights.h5", good["model.weights.h5"])])
    monkeypatch.setitem(keras_archive.LIMITS, "config_bytes", 1 << 20)
    refuse(str(p2), "config.json.*declares")
    p3 = write_zip(tmp_path / "junk.keras", [("config.json", b"{not json"), ("model.weights.h5", b"")])
    refuse(str(p3), "not valid JSON")
    p4 = write_zip(tmp_path / "latin.keras", [("config.json", b"\xff\xfe"), ("model.weights.h5", b"")])
    refuse(str(p4), "UTF-8")


def test_lambda_and_unknown_classes_refused(tmp_path, good):
    def lam(cfg):
        cfg["config"]["layers"][1] = {"module": "keras.layers", "class_name": "Lambda", "registered_name": None,
                                      "config": {"name": "l", "function": {"class_name": "__lambda__", "config": {
                                          "code": "4wEAAAAAAAAA", "defaults": None, "closure": None}}}}
    refuse(str(write_zip(tmp_path / "lam.keras", with_config(good, lam))), "Lambda.*never loads code")
    refuse(str(write_zip(tmp_path / "lam2.keras", with_config(good, lam))), "Lambda", safe_mode=False)

    def unknown(cfg):
        cfg["config"]["layers"][1]["class_name"] = "Pwn"
    refuse(str(write_zip(tmp_path / "unk.keras", with_config(good, unknown))), "unsupported layer type 'Pwn'")

    def top(cfg):
        cfg["class_name"] = "Dense"
    refuse(str(write_zip(tmp_path / "top.keras", with_config(good, top))), "not a model")


def test_module_fields_never_import(tmp_path, good, monkeypatch):
    """A file naming a module (that exists on sys.path) and a registered_name never imports it."""
    canary_dir = tmp_path / "mods"
    canary_dir.mkdir()
    (canary_dir / "kilnet_canary_mod.py").write_text(
        "import pathlib\npathlib.Path(__file__).with_name('IMPORTED').write_text('yes')\nclass Evil: pass\n")
    monkeypatch.syspath_prepend(str(canary_dir))

    def evil(cfg):
        layer = cfg["config"]["layers"][1]
        layer["module"] = "kilnet_canary_mod"
        layer["class_name"] = "Evil"
        layer["registered_name"] = "kilnet_canary_mod>Evil"

    def evil_top(cfg):
        cfg["module"] = "kilnet_canary_mod"
        cfg["class_name"] = "Evil"
        cfg["registered_name"] = "kilnet_canary_mod.Evil"

    def evil_init(cfg):   # a nested object (an initializer) naming a module
        layer = cfg["config"]["layers"][1]
        layer["config"]["kernel_initializer"] = {"module": "kilnet_canary_mod", "class_name": "Evil",
                                                 "config": {}, "registered_name": "kilnet_canary_mod>Evil"}
    for i, edit in enumerate((evil, evil_top, evil_init)):
        p = write_zip(tmp_path / f"evil{i}.keras", with_config(good, edit))
        with pytest.raises(ModelFileError):
            load_model(p)
    assert "kilnet_canary_mod" not in sys.modules and not (canary_dir / "IMPORTED").exists()

    def dense_with_module(cfg):   # a known class with an odd module: the module is ignored
        cfg["config"]["layers"][1]["module"] = "kilnet_canary_mod"
    m = load_model(write_zip(tmp_path / "ok.keras", with_config(good, dense_with_module)))
    assert type(m.layers[0]).__name__ == "Dense"
    assert "kilnet_canary_mod" not in sys.modules and not (canary_dir / "IMPORTED").exists()


def test_weights_member_tricks(tmp_path, good):
    """External links, external storage and wrong shapes inside model.weights.h5 are refused;
    a weights file that is not HDF5 is refused."""
    target = tmp_path / "outside.h5"
    with h5py.File(target, "w") as f:
        f.create_dataset("w", data=np.ones((4, 3), "f"))
    buf = io.BytesIO(good["model.weights.h5"])
    with h5py.File(buf, "a") as f:
        del f["layers/dense/vars/0"]
        f["layers/dense/vars/0"] = h5py.ExternalLink(str(target), "w")
    refuse(str(write_zip(tmp_path / "link.keras", [("config.json", good["config.json"]),
                                                   ("model.weights.h5", buf.getvalue())])), "links are refused")
    buf = io.BytesIO(good["model.weights.h5"])
    with h5py.File(buf, "a") as f:
        del f["layers/dense/vars/0"]
        f.create_dataset("layers/dense/vars/0", shape=(4, 3), dtype="f4", external=[(str(target), 0, 48)])
    refuse(str(write_zip(tmp_path / "ext.keras", [("config.json", good["config.json"]),
                                                  ("model.weights.h5", buf.getvalue())])), "external")
    buf = io.BytesIO(good["model.weights.h5"])
    with h5py.File(buf, "a") as f:
        del f["layers/dense/vars/0"]
        f.create_dataset("layers/dense/vars/0", data=np.ones((5, 3), "f"))
    refuse(str(write_zip(tmp_path / "shape.keras", [("config.json", good["config.json"]),
                                                    ("model.weights.h5", buf.getvalue())])), "shape")
    refuse(str(write_zip(tmp_path / "nh5.keras", [("config.json", good["config.json"]),
                                                  ("model.weights.h5", b"not hdf5")])), "not a readable HDF5")
    refuse(str(write_zip(tmp_path / "now.keras", [("config.json", good["config.json"])])), "no model.weights.h5")


def test_not_a_zip_and_truncated(tmp_path, good):
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"PK\x03\x04 this is no archive" * 10)
    refuse(str(junk), "not a readable .keras")
    full = write_zip(tmp_path / "full.keras", list(good.items()))
    cut = tmp_path / "cut.keras"
    cut.write_bytes(full.read_bytes()[: os.path.getsize(full) // 2])
    refuse(str(cut), "not a readable .keras|damaged")
