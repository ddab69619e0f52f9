"""Data pipelines: generators, iterators, PyDataset (threads, processes), torch DataLoaders and
validation_data in those forms give the weights the array path gives on the same batches in
the same order; Keras 3's epoch rules; errors (a failing data function, a wrong shape, no
batches); image_dataset_from_directory; np.memmap inputs read batch by batch."""
import itertools
import os
import threading
import tracemalloc

import numpy as np
import pytest

import kilnet
from kilnet import layers
from kilnet.utils import PyDataset, image_dataset_from_directory

N, B, F = 40, 8, 6


def _data(seed=0, n=N):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, F)).astype(np.float32)
    y = rng.integers(0, 3, n)
    return x, y


def _model(seed=0, metrics=("accuracy",)):
    kilnet.utils.set_random_seed(seed)
    m = kilnet.models.Sequential([layers.Dense(5, activation="relu", input_shape=(F,)),
                                  layers.Dense(3, activation="softmax")])
    m.compile(optimizer=kilnet.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", metrics=list(metrics))
    return m


def _batches(x, y, sw=None, b=B):
    for i in range(0, len(x), b):
        yield (x[i:i + b], y[i:i + b]) if sw is None else (x[i:i + b], y[i:i + b], sw[i:i + b])


def _same_weights(m1, m2):
    for a, b in zip(m1.get_weights(), m2.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def _reference(epochs=1, sw=None):
    x, y = _data()
    m = _model()
    h = m.fit(x, y, batch_size=B, epochs=epochs, shuffle=False, verbose=0, sample_weight=sw)
    return m, h


class ArrayBatches(PyDataset):
    def __init__(self, x, y, b=B, **kw):
        super().__init__(**kw)
        self.x, self.y, self.b = x, y, b
        self.epochs_ended = 0

    def __len__(self):
        return -(-len(self.x) // self.b)

    def __getitem__(self, i):
        return self.x[i * self.b:(i + 1) * self.b], self.y[i * self.b:(i + 1) * self.b]

    def on_epoch_end(self):
        self.epochs_ended += 1


class Reiterable:
    """An iterable that is neither a generator nor a PyDataset (a new pass per iter())."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __iter__(self):
        return _batches(self.x, self.y)


@pytest.fixture(autouse=True, params=["auto", "thread"])
def read_mode(request, monkeypatch):
    """Every test twice: as fit decides (cheap batches here: read inline) and with the
    background thread taking over after the first batch (as for slow data code)."""
    if request.param == "thread":
        from kilnet.trainers import data_adapters
        monkeypatch.setattr(data_adapters._Prefetcher, "PROBE", 1)
        monkeypatch.setattr(data_adapters._Prefetcher, "THREAD_SHARE", -1.0)
        monkeypatch.setattr(data_adapters._Prefetcher, "THREAD_MIN_S", -1.0)
    return request.param


@pytest.mark.parametrize("spare", [False, True], ids=["all-cores-busy", "spare-core"])
def test_cheap_batches_are_read_inline_and_slow_ones_by_a_thread(read_mode, spare, monkeypatch):
    """The first batches are read on fit's thread and timed; data code that takes a real share
    of the step moves to the background thread (prefetching hides it), cheap code stays inline
    (no GIL hand-overs) — unless kilnet's kernels leave a core free, where the thread runs beside
    them from 1% of the time on (here the model is tiny, so even cheap data code is more)."""
    if read_mode != "auto":
        pytest.skip("the decision itself")
    from kilnet.trainers import data_adapters
    monkeypatch.setattr(data_adapters, "_spare_core", lambda: spare)
    import time as _time
    x, y = _data(n=200)

    def gen(delay):
        for i in range(0, len(x), B):
            if delay:
                _time.sleep(delay)
            yield x[i:i + B], y[i:i + B]
    m = _model()
    seen = []

    class Where(kilnet.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(threading.current_thread().name)
    threads = []
    orig = threading.Thread.start

    def spy(self):
        threads.append(self.name)
        return orig(self)
    threading.Thread.start = spy
    try:
        m.fit(gen(0.0), verbose=0, callbacks=[Where()])
        cheap = list(threads)
        m.fit(gen(0.005), verbose=0)
        slow = threads[len(cheap):]
    finally:
        threading.Thread.start = orig
    assert ("kilnet-data" in cheap) == spare
    assert slow == ["kilnet-data"]
    assert set(seen) == {"MainThread"}


def _no_data_threads():
    return [t for t in threading.enumerate() if t.name.startswith("kilnet-")]


# ---------------------------------------------------------------------- same weights as arrays
def test_generator_matches_arrays():
    ref, h_ref = _reference()
    x, y = _data()
    m = _model()
    h = m.fit(_batches(x, y), verbose=0)
    _same_weights(ref, m)
    np.testing.assert_allclose(h.history["loss"], h_ref.history["loss"], rtol=1e-6)
    np.testing.assert_allclose(h.history["accuracy"], h_ref.history["accuracy"])
    assert not _no_data_threads()


def test_endless_generator_with_steps_per_epoch_matches_arrays():
    ref, h_ref = _reference(epochs=3)
    x, y = _data()
    m = _model()
    h = m.fit(itertools.cycle(list(_batches(x, y))), steps_per_epoch=N // B, epochs=3, verbose=0)
    _same_weights(ref, m)
    np.testing.assert_allclose(h.history["loss"], h_ref.history["loss"], rtol=1e-6)


@pytest.mark.parametrize("workers,mp", [(1, False), (3, False), (2, True)])
def test_pydataset_matches_arrays(workers, mp):
    ref, _ = _reference(epochs=2)
    x, y = _data()
    m = _model()
    ds = ArrayBatches(x, y, workers=workers, use_multiprocessing=mp, max_queue_size=3)
    m.fit(ds, epochs=2, shuffle=False, verbose=0)
    _same_weights(ref, m)
    assert ds.epochs_ended == 2
    assert not _no_data_threads()


def test_pydataset_shuffle_is_repeatable_and_changes_batch_order():
    x, y = _data()
    ws = []
    for _ in range(2):
        m = _model()
        kilnet.utils.set_random_seed(5)
        m.fit(ArrayBatches(x, y), epochs=2, verbose=0)   # shuffle=True: batch order drawn per epoch
        ws.append(m.get_weights())
    for a, b in zip(*ws):
        np.testing.assert_array_equal(a, b)
    ref, _ = _reference(epochs=2)
    assert any(not np.allclose(a, b) for a, b in zip(ws[0], ref.get_weights()))


def test_reiterable_and_torch_dataloader_match_arrays():
    torch = pytest.importorskip("torch")
    ref, _ = _reference(epochs=2)
    x, y = _data()
    m = _model()
    m.fit(Reiterable(x, y), epochs=2, verbose=0)
    _same_weights(ref, m)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
                                         batch_size=B, shuffle=False)
    m = _model()
    m.fit(loader, epochs=2, verbose=0)
    _same_weights(ref, m)
    np.testing.assert_allclose(m.evaluate(loader, verbose=0), ref.evaluate(x, y, batch_size=B, verbose=0), rtol=1e-6)


def test_torch_dataloader_with_workers_trains_a_conv_model():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x = rng.random((48, 1, 8, 8), dtype=np.float32)      # torch's channels-first images ...
    y = rng.integers(0, 4, 48)

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return torch.from_numpy(x[i]).permute(1, 2, 0), int(y[i])   # ... handed over channels-last

    loader = torch.utils.data.DataLoader(Images(), batch_size=16, shuffle=False, num_workers=2)
    kilnet.utils.set_random_seed(0)
    m = kilnet.models.Sequential([layers.Conv2D(4, 3, activation="relu", input_shape=(8, 8, 1)), layers.Flatten(),
                                  layers.Dense(4, activation="softmax")])
    m.compile("sgd", "sparse_categorical_crossentropy")
    w0 = m.get_weights()    # built by input_shape
    m.fit(loader, epochs=2, verbose=0)
    kilnet.utils.set_random_seed(0)
    ref = kilnet.models.Sequential([layers.Conv2D(4, 3, activation="relu", input_shape=(8, 8, 1)), layers.Flatten(),
                                    layers.Dense(4, activation="softmax")])
    ref.compile("sgd", "sparse_categorical_crossentropy")
    ref.set_weights(w0)
    ref.fit(x.transpose(0, 2, 3, 1), y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    _same_weights(ref, m)


def test_sample_weight_triples_and_dict_inputs_match_arrays():
    x, y = _data()
    sw = np.linspace(0.2, 2.0, N).astype(np.float32)
    ref, h_ref = _reference(sw=sw)
    m = _model()
    h = m.fit(_batches(x, y, sw), verbose=0)
    _same_weights(ref, m)
    np.testing.assert_allclose(h.history["loss"], h_ref.history["loss"], rtol=1e-6)

    def functional():
        kilnet.utils.set_random_seed(1)
        a, b = kilnet.Input((4,), name="a"), kilnet.Input((2,), name="b")
        out = layers.Dense(3, activation="softmax")(layers.Concatenate()([layers.Dense(5)(a), b]))
        f = kilnet.Model([a, b], out)
        f.compile("sgd", "sparse_categorical_crossentropy")
        return f
    f_ref, f = functional(), functional()
    f_ref.fit({"a": x[:, :4], "b": x[:, 4:]}, y, batch_size=B, shuffle=False, verbose=0)
    f.fit(({"a": x[i:i + B, :4], "b": x[i:i + B, 4:]}, y[i:i + B]) for i in range(0, N, B))
    _same_weights(f_ref, f)


def test_validation_data_evaluate_and_predict_from_streams():
    x, y = _data()
    xv, yv = _data(seed=9, n=24)
    ref = _model()
    h_ref = ref.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0, validation_data=(xv, yv))
    for val in (lambda: _batches(xv, yv), lambda: ArrayBatches(xv, yv), lambda: Reiterable(xv, yv)):
        m = _model()
        h = m.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0, validation_data=val())
        _same_weights(ref, m)
        np.testing.assert_allclose(h.history["val_loss"], h_ref.history["val_loss"], rtol=1e-6)
        np.testing.assert_allclose(h.history["val_accuracy"], h_ref.history["val_accuracy"])
        m = _model()
        h = m.fit(_batches(x, y), verbose=0, validation_data=val())      # a stream validating a stream
        np.testing.assert_allclose(h.history["val_loss"][0], h_ref.history["val_loss"][0], rtol=1e-6)
    m = _model()
    h = m.fit(ArrayBatches(x, y), epochs=2, shuffle=False, verbose=0, validation_data=(xv, yv))
    np.testing.assert_allclose(h.history["val_loss"], h_ref.history["val_loss"], rtol=1e-6)
    # validation_steps continue one pass of an endless generator
    m = _model()
    h = m.fit(x, y, batch_size=B, epochs=2, shuffle=False, verbose=0,
              validation_data=itertools.cycle(list(_batches(xv, yv))), validation_steps=3)
    assert len(h.history["val_loss"]) == 2
    # evaluate / predict
    np.testing.assert_allclose(ref.evaluate(_batches(xv, yv), verbose=0),
                               ref.evaluate(xv, yv, batch_size=B, verbose=0), rtol=1e-6)
    np.testing.assert_allclose(ref.evaluate(ArrayBatches(xv, yv), steps=2, verbose=0),
                               ref.evaluate(xv[:16], yv[:16], batch_size=B, verbose=0), rtol=1e-6)
    want = ref.predict(xv, verbose=0)
    np.testing.assert_allclose(ref.predict(_batches(xv, yv), verbose=0), want, rtol=1e-6)
    np.testing.assert_allclose(ref.predict((xv[i:i + 5] for i in range(0, 24, 5)), verbose=0), want, rtol=1e-6)
    np.testing.assert_allclose(ref.predict(ArrayBatches(xv, yv), verbose=0), want, rtol=1e-6)
    assert not _no_data_threads()


def test_generator_reusing_one_buffer_is_safe():
    """Batches wait in a queue: a generator refilling one array must not change queued ones."""
    ref, _ = _reference()
    x, y = _data()
    buf_x, buf_y = np.empty((B, F), np.float32), np.empty(B, np.int64)

    def gen():
        for i in range(0, N, B):
            buf_x[...] = x[i:i + B]
            buf_y[...] = y[i:i + B]
            yield buf_x, buf_y
    m = _model()
    m.fit(gen(), verbose=0)
    _same_weights(ref, m)


# ---------------------------------------------------------------------- Keras 3's epoch rules
class _Count(kilnet.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.per_epoch = []

    def on_epoch_begin(self, epoch, logs=None):
        self.per_epoch.append(0)

    def on_train_batch_end(self, batch, logs=None):
        self.per_epoch[-1] += 1


def test_epoch_rules():
    x, y = _data(n=50)
    c = _Count()
    m = _model()
    with pytest.warns(UserWarning, match="ran out of data"):    # a one-shot generator: one epoch
        h = m.fit(_batches(x, y, b=5), epochs=3, verbose=0, callbacks=[c])
    assert c.per_epoch[:1] == [10] and len(h.history["loss"]) == 1
    with pytest.warns(UserWarning, match="ran out of data"):    # steps continue one pass (Keras: 4, 4, 2)
        m.fit(_batches(x, y, b=5), epochs=3, steps_per_epoch=4, verbose=0, callbacks=[c])
    assert c.per_epoch == [4, 4, 2]
    ds = ArrayBatches(x, y, b=10)                               # len 5, steps 3: 3, 2, then a new pass: 3
    with pytest.warns(UserWarning, match="ran out of data"):
        m.fit(ds, epochs=3, steps_per_epoch=3, shuffle=False, verbose=0, callbacks=[c])
    assert c.per_epoch == [3, 2, 3] and ds.epochs_ended == 3
    with pytest.warns(UserWarning, match="ran out of data"):    # more steps than batches: the batches
        m.fit(ArrayBatches(x, y, b=10), epochs=2, steps_per_epoch=7, shuffle=False, verbose=0, callbacks=[c])
    assert c.per_epoch == [5, 5]
    m.fit(Reiterable(x, y), epochs=3, verbose=0, callbacks=[c])  # re-iterable: a full pass per epoch
    assert c.per_epoch == [7, 7, 7]    # 50 samples in batches of 8
    m.fit(ArrayBatches(x, y, b=10), epochs=2, steps_per_epoch=5, shuffle=False, verbose=0, callbacks=[c])
    assert c.per_epoch == [5, 5]


def test_one_shot_validation_generator_is_kept_for_later_epochs():
    x, y = _data()
    xv, yv = _data(seed=4, n=16)
    m = _model()
    h = m.fit(_batches(x, y), epochs=1, verbose=0, validation_data=_batches(xv, yv))
    m2 = _model()
    h2 = m2.fit(itertools.cycle(list(_batches(x, y))), steps_per_epoch=N // B, epochs=3, verbose=0,
                validation_data=_batches(xv, yv))
    assert len(h2.history["val_loss"]) == 3
    np.testing.assert_allclose(h2.history["val_loss"][0], h.history["val_loss"][0], rtol=1e-6)
    np.testing.assert_allclose(h2.history["val_loss"][2], m2.evaluate(xv, yv, batch_size=B, verbose=0)[0], rtol=1e-6)


# ---------------------------------------------------------------------- errors
def test_data_code_raising_mid_epoch_stops_fit():
    x, y = _data()

    def gen():
        yield from itertools.islice(_batches(x, y), 2)
        raise OSError("disk went away")
    m = _model()
    with pytest.raises(OSError, match="disk went away"):
        m.fit(gen(), verbose=0)
    assert not _no_data_threads()

    class Broken(ArrayBatches):
        def __getitem__(self, i):
            if i == 3:
                raise KeyError("no batch 3")
            return super().__getitem__(i)
    for kw in ({}, {"workers": 3}, {"workers": 2, "use_multiprocessing": True}):
        with pytest.raises(KeyError, match="no batch 3"):
            _model().fit(Broken(x, y, **kw), shuffle=False, verbose=0)
        assert not _no_data_threads()
    # the model is usable afterwards
    m.fit(x, y, verbose=0)


def test_training_error_stops_the_data_thread():
    x, y = _data()

    class Boom(kilnet.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                raise RuntimeError("stop here")
    with pytest.raises(RuntimeError, match="stop here"):
        _model().fit(itertools.cycle(list(_batches(x, y))), steps_per_epoch=100, verbose=0, callbacks=[Boom()])
    assert not _no_data_threads()


def test_bad_batches_name_the_batch():
    x, y = _data()

    def wrong_shape():
        for i, (xb, yb) in enumerate(_batches(x, y)):
            yield (xb[:, :4] if i == 3 else xb), yb
    with pytest.raises(ValueError, match=r"batch 3.*\(8, 4\)"):
        _model().fit(wrong_shape(), verbose=0)
    assert not _no_data_threads()

    def bad_labels():
        for i, (xb, yb) in enumerate(_batches(x, y)):
            yield xb, (yb + 7 if i == 2 else yb)
    with pytest.raises(ValueError, match=r"batch 2.*out of range"):
        _model().fit(bad_labels(), verbose=0)
    with pytest.raises(ValueError, match="batch 0.*no targets"):
        _model().fit((xb for xb, _ in _batches(x, y)), verbose=0)
    with pytest.raises(ValueError, match="batch 1.*4 elements"):
        _model().fit(((xb, yb, None, None) if i == 1 else (xb, yb) for i, (xb, yb) in enumerate(_batches(x, y))),
                     verbose=0)
    with pytest.raises(ValueError, match="generator yielded no batches"):
        _model().fit(iter([]), verbose=0)
    with pytest.raises(ValueError, match="yielded no batches"):
        _model().predict(iter([]), verbose=0)
    with pytest.raises(ValueError, match="yielded no batches"):
        _model().evaluate((b for b in []), verbose=0)
    with pytest.raises(ValueError, match="do not pass y"):
        _model().fit(_batches(x, y), y, verbose=0)
    with pytest.raises(ValueError, match="class_weight is not supported"):
        _model().fit(_batches(x, y), class_weight={0: 2.0}, verbose=0)
    with pytest.raises(ValueError, match="validation_split needs arrays"):
        _model().fit(_batches(x, y), validation_split=0.2, verbose=0)
    with pytest.raises(ValueError, match="steps_per_epoch applies to generators"):
        _model().fit(x, y, steps_per_epoch=2, verbose=0)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        _model().fit(_batches(x, y), steps_per_epoch=0, verbose=0)
    assert not _no_data_threads()


def test_pydataset_class_weight_matches_array_class_weight():
    x, y = _data()
    cw = {0: 0.5, 1: 2.0, 2: 1.0}
    ref = _model()
    ref.fit(x, y, batch_size=B, shuffle=False, class_weight=cw, verbose=0)
    m = _model()
    m.fit(ArrayBatches(x, y), shuffle=False, class_weight=cw, verbose=0)
    _same_weights(ref, m)


# ---------------------------------------------------------------------- image_dataset_from_directory
def _image_folder(tmp_path):
    from PIL import Image
    colours = {"cats": (255, 0, 0), "dogs": (0, 255, 0), "eels": (0, 0, 255)}
    n = {"cats": 5, "dogs": 4, "eels": 3}
    for cls, c in colours.items():
        os.makedirs(tmp_path / cls / "sub")
        for i in range(n[cls]):
            size = (20 + 3 * i, 14 + i)
            where = tmp_path / cls / ("sub" if i % 2 else "") / f"img{i}.{('png', 'jpg', 'bmp')[i % 3]}"
            Image.new("RGB", size, c).save(where)
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    return tmp_path


def test_image_dataset_from_directory(tmp_path):
    root = _image_folder(tmp_path)
    ds = image_dataset_from_directory(str(root), batch_size=4, image_size=(10, 12), seed=3, verbose=False)
    assert ds.class_names == ["cats", "dogs", "eels"]
    assert len(ds.file_paths) == 12 and len(ds) == 3
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert x.shape == (12, 10, 12, 3) and x.dtype == np.float32 and y.dtype == np.int32
    assert np.bincount(y).tolist() == [5, 4, 3]
    np.testing.assert_allclose(x[:, 5, 6, :].argmax(-1), y)         # each class has its own colour
    # the same seed, the same files in the same order
    again = image_dataset_from_directory(str(root), batch_size=4, image_size=(10, 12), seed=3, verbose=False)
    assert again.file_paths == ds.file_paths
    # splits: disjoint, together everything, training + validation sizes as Keras
    tr, va = image_dataset_from_directory(str(root), validation_split=0.25, subset="both", seed=7,
                                          image_size=(8, 8), label_mode="categorical", verbose=False)
    assert len(tr.file_paths) == 9 and len(va.file_paths) == 3
    assert sorted(tr.file_paths + va.file_paths) == sorted(ds.file_paths)
    v = image_dataset_from_directory(str(root), validation_split=0.25, subset="validation", seed=7,
                                     image_size=(8, 8), verbose=False)
    assert v.file_paths == va.file_paths
    xb, yb = va[0]
    assert yb.shape == (3, 3) and (yb.sum(1) == 1).all()
    g = image_dataset_from_directory(str(root), color_mode="grayscale", label_mode=None, batch_size=None,
                                     image_size=6, shuffle=False, verbose=False)
    assert g[0].shape == (6, 6, 1) and g.class_names is None
    b = image_dataset_from_directory(str(root), class_names=["eels", "dogs"], label_mode="binary", image_size=5,
                                     shuffle=False, verbose=False)
    xb, yb = b[0]
    assert b.class_names == ["eels", "dogs"] and yb.shape == (7, 1) and yb.sum() == 4   # eels first: 0
    # fit on it (and validate on the other half)
    kilnet.utils.set_random_seed(0)
    m = kilnet.models.Sequential([layers.Rescaling(1 / 255.0, input_shape=(8, 8, 3)), layers.Flatten(),
                                  layers.Dense(3, activation="softmax")]) if hasattr(layers, "Rescaling") else \
        kilnet.models.Sequential([layers.Flatten(input_shape=(8, 8, 3)), layers.Dense(3, activation="softmax")])
    m.compile(kilnet.optimizers.Adam(1e-3), "categorical_crossentropy", metrics=["accuracy"])
    h = m.fit(tr, validation_data=va, epochs=2, verbose=0)
    assert len(h.history["val_loss"]) == 2 and np.isfinite(h.history["loss"]).all()


def test_image_dataset_matches_keras_file_order_and_split(tmp_path):
    os.environ.setdefault("KERAS_BACKEND", "jax")
    dataset_utils = pytest.importorskip("keras.src.utils.dataset_utils")
    root = _image_folder(tmp_path)
    formats = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
    paths, labels, names = dataset_utils.index_directory(str(root), "inferred", formats=formats, shuffle=True,
                                                         seed=11, verbose=False)
    tp, tl = dataset_utils.get_training_or_validation_split(paths, labels, 0.3, "training")
    ours = image_dataset_from_directory(str(root), validation_split=0.3, subset="training", seed=11,
                                        image_size=(4, 4), batch_size=100, shuffle=True, verbose=False)
    assert ours.class_names == names
    assert sorted(ours.file_paths) == sorted(tp)      # the same training files (order: reshuffled per epoch)
    ours_plain = image_dataset_from_directory(str(root), seed=11, image_size=(4, 4), verbose=False)
    assert len(ours_plain.file_paths) == len(paths)
    # before the per-epoch reshuffle, the file order is Keras's
    from kilnet.image_dataset import _index_directory
    p2, l2, n2 = _index_directory(str(root), "inferred", None, True, 11, False, False)
    assert p2 == paths and l2.tolist() == list(labels) and n2 == names


def test_image_dataset_errors(tmp_path):
    root = _image_folder(tmp_path)
    with pytest.raises(ValueError, match="must provide a `seed`"):
        image_dataset_from_directory(str(root), validation_split=0.2, subset="training", verbose=False)
    with pytest.raises(ValueError, match="did not match"):
        image_dataset_from_directory(str(root), class_names=["birds"], verbose=False)
    with pytest.raises(ValueError, match="exactly 2"):
        image_dataset_from_directory(str(root), label_mode="binary", verbose=False)
    with pytest.raises(ValueError, match="color_mode"):
        image_dataset_from_directory(str(root), color_mode="cmyk", verbose=False)
    with pytest.raises(ValueError, match="not a directory"):
        image_dataset_from_directory(str(root / "nope"), verbose=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="No images found"):
        image_dataset_from_directory(str(empty), verbose=False)


# ---------------------------------------------------------------------- memmap
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_memmap_trains_batchwise_without_a_whole_copy(tmp_path, dtype):
    rows, cols = 20000, 256
    path = tmp_path / "x.bin"
    mm = np.memmap(path, dtype=dtype, mode="w+", shape=(rows, cols))
    rng = np.random.default_rng(0)
    for i in range(0, rows, 5000):
        mm[i:i + 5000] = rng.normal(size=(5000, cols))
    mm.flush()
    y = rng.integers(0, 2, rows)
    x = np.memmap(path, dtype=dtype, mode="r", shape=(rows, cols))

    def model():
        kilnet.utils.set_random_seed(0)
        m = kilnet.models.Sequential([layers.Dense(2, activation="softmax", input_shape=(cols,))])
        m.compile(kilnet.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
        return m
    m = model()
    m.predict(x[:2], verbose=0)    # allocations of building the model, outside the measure
    tracemalloc.start()
    kilnet.utils.set_random_seed(1)
    m.fit(x, y, batch_size=256, epochs=1, verbose=0, validation_split=0.1)
    p = m.predict(x, batch_size=1000, verbose=0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < x.nbytes / 8, (peak, x.nbytes)    # a whole copy (or a whole-array temporary) is not made
    ref = model()
    ref.predict(x[:2], verbose=0)
    kilnet.utils.set_random_seed(1)
    ref.fit(np.asarray(x, np.float32), y, batch_size=256, epochs=1, verbose=0, validation_split=0.1)
    _same_weights(ref, m)
    np.testing.assert_allclose(p, ref.predict(np.asarray(x, np.float32), verbose=0), rtol=1e-5, atol=1e-6)


def test_memmap_with_nan_is_refused(tmp_path):
    mm = np.memmap(tmp_path / "x.bin", dtype=np.float32, mode="w+", shape=(100, 3))
    mm[:] = 1.0
    mm[77, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        m = kilnet.models.Sequential([layers.Dense(1, input_shape=(3,))])
        m.compile("sgd", "mse")
        m.fit(mm, np.zeros(100), verbose=0)


def test_spare_core_follows_kilnet_threads():
    from kilnet.trainers import data_adapters
    old = kilnet.backend.get_num_threads()
    try:
        kilnet.set_num_threads(1)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        assert data_adapters._spare_core() == (cores > 1)
        kilnet.set_num_threads(cores)
        assert not data_adapters._spare_core()
    finally:
        kilnet.set_num_threads(old)
