"""Data parallelism over MPI (kilnet.distributed): each test launches
`mpirun -n 2 --oversubscribe python tests/dist_worker.py MODE` with a timeout; skipped when
mpirun or mpi4py is missing. The one-process tests run everywhere."""
import importlib.util
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "dist_worker.py")

spec = importlib.util.spec_from_file_location("dist_worker", WORKER)
worker = importlib.util.module_from_spec(spec)
spec.loader.exec_module(worker)

# the ranks import the kilnet this test imported (the installed one, or python/ in a dev tree)
KILNET_HOME = os.path.dirname(os.path.dirname(os.path.abspath(__import__("kilnet").__file__)))
MPIRUN = shutil.which("mpirun")
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(MPIRUN is None or not HAVE_MPI4PY,
                               reason="needs Open MPI's mpirun and mpi4py (pip install mpi4py)")


def mpirun(mode, *args, n=2, timeout=60, env=None):
    """Run the worker under mpirun; returns (returncode, output, seconds)."""
    e = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
             OMPI_MCA_rmaps_base_oversubscribe="1", KILNET_NUM_THREADS="1", OMP_NUM_THREADS="1",
             PYTHONPATH=os.pathsep.join([KILNET_HOME, os.environ.get("PYTHONPATH", "")]), **(env or {}))
    t0 = time.monotonic()
    try:
        p = subprocess.run([MPIRUN, "-n", str(n), "--oversubscribe", sys.executable, WORKER, mode, *args],
                           capture_output=True, text=True, timeout=timeout, env=e)
    except subprocess.TimeoutExpired as ex:
        pytest.fail(f"mpirun {mode} did not end within {timeout}s (a hang):\n{ex.stdout}\n{ex.stderr}")
    return p.returncode, p.stdout + p.stderr, time.monotonic() - t0


@pytest.fixture(scope="module")
def reference():
    """One process at the global batch of 64, the weights 2 ranks x 32 must reproduce."""
    import kilnet
    threads = kilnet.get_num_threads()
    kilnet.set_num_threads(1)
    try:
        m1, h1 = worker.train(worker.cnn, worker.data_cnn, worker.GLOBAL_BATCH, False, validation_split=0.2)
        m2, h2 = worker.train(worker.rnn, worker.data_rnn, worker.GLOBAL_BATCH, False)
    finally:
        kilnet.set_num_threads(threads)
    return {"cnn": m1._params.copy(), "rnn": m2._params.copy(), "cnn_loss": h1["loss"],
            "rnn_loss": h2["loss"], "cnn_acc": h1["accuracy"], "cnn_val_loss": h1["val_loss"],
            "cnn_val_acc": h1["val_accuracy"]}


@needs_mpi
def test_two_ranks_match_one_rank_at_twice_the_batch(tmp_path, reference):
    out = tmp_path / "w.npz"
    rc, log, _ = mpirun("equiv", str(out))
    assert rc == 0, log
    got = np.load(out)
    for key in ("cnn", "rnn"):
        np.testing.assert_allclose(got[key], reference[key], rtol=1e-4, atol=2e-6, err_msg=key)
    # the logged loss and accuracy are the global figures, as one process reports them
    np.testing.assert_allclose(got["cnn_loss"], reference["cnn_loss"], rtol=1e-5)
    np.testing.assert_allclose(got["rnn_loss"], reference["rnn_loss"], rtol=1e-5)
    np.testing.assert_allclose(got["cnn_acc"], reference["cnn_acc"], rtol=1e-6)
    # validation is split between the ranks and summed: the one-process figures
    np.testing.assert_allclose(got["cnn_val_loss"], reference["cnn_val_loss"], rtol=1e-4)
    np.testing.assert_allclose(got["cnn_val_acc"], reference["cnn_val_acc"], rtol=1e-6)
    # ModelCheckpoint ran on rank 0 only
    assert os.path.exists(f"{out}.rank0.h5") and not os.path.exists(f"{out}.rank1.h5")


@needs_mpi
def test_mismatched_models_fail_on_every_rank():
    rc, log, _ = mpirun("mismatch", timeout=60)
    assert rc != 0
    assert "rank 0 RuntimeError" in log and "rank 1 RuntimeError" in log, log
    assert "the ranks do not train the same model" in log, log
    assert "layer 0 (Conv2D) filters: 32" in log and "layer 0 (Conv2D) filters: 16" in log, log
    assert "no error" not in log


@needs_mpi
def test_different_data_across_ranks_fails_on_every_rank():
    rc, log, _ = mpirun("datamismatch", timeout=60)
    assert rc != 0
    assert "rank 0 RuntimeError" in log and "rank 1 RuntimeError" in log, log
    assert "fit data digest" in log, log


@needs_mpi
@pytest.mark.parametrize("how", ["kill", "sigkill"])
def test_killed_rank_ends_the_job(how):
    rc, log, secs = mpirun(how, timeout=60)
    assert rc != 0, log
    assert "finished" not in log


@needs_mpi
def test_uncaught_exception_aborts_the_job():
    rc, log, _ = mpirun("raise", timeout=60)
    assert rc != 0, log
    assert "rank 1 failed on purpose" in log and "aborting the MPI job" in log, log
    assert "finished" not in log


@needs_mpi
def test_hung_rank_is_caught_by_the_watchdog():
    rc, log, secs = mpirun("hang", timeout=60, env={"KILNET_DIST_TIMEOUT": "3"})
    assert rc != 0, log
    assert "waited more than 3s" in log, log


def test_one_process_distributed_fit_equals_fit(reference):
    """Without mpirun, fit(distributed=True) is rank 0 of 1 and gives fit()'s weights exactly."""
    from kilnet import distributed as dist
    import kilnet
    assert dist.size() == 1 and dist.rank() == 0 and dist.is_main()
    threads = kilnet.get_num_threads()
    kilnet.set_num_threads(1)
    try:
        m, h = worker.train(worker.cnn, worker.data_cnn, worker.GLOBAL_BATCH, True, validation_split=0.2)
    finally:
        kilnet.set_num_threads(threads)
    np.testing.assert_array_equal(m._params, reference["cnn"])
    assert h["loss"] == pytest.approx(reference["cnn_loss"], rel=1e-12)
    assert h["val_loss"] == pytest.approx(reference["cnn_val_loss"], rel=1e-12)
    assert all(type(v) is float for v in h["loss"])


def test_one_process_batch_callbacks_and_stop_training(reference):
    """LambdaCallback's on_train_batch_end runs with the running global figures, and a stop
    requested there ends the epoch, as in fit()."""
    from kilnet.callbacks import LambdaCallback
    seen = []

    def on_batch(batch, logs):
        seen.append((batch, logs["loss"]))
        if batch == 1:
            cb.model.stop_training = True

    cb = LambdaCallback(on_train_batch_end=on_batch)
    _, h = worker.train(worker.rnn, worker.data_rnn, 32, True, epochs=3, callbacks=[cb])
    assert [b for b, _ in seen] == [0, 1] and all(np.isfinite(v) for _, v in seen)
    assert len(h["loss"]) == 1


def test_gradient_buckets_cover_the_buffer_in_backward_order():
    from kilnet.distributed import GradientSync
    m = worker.cnn()
    m._consolidate()
    sync = GradientSync(m, bucket_bytes=4096)
    spans = [(lo, hi) for lo, hi, _ in sync.buckets]
    assert spans[0][1] == m._grads.size and spans[-1][0] == 0
    assert all(a[0] == b[1] for a, b in zip(spans, spans[1:]))   # contiguous, last layer first
    one = GradientSync(m, bucket_bytes=1 << 30)
    assert [(lo, hi) for lo, hi, _ in one.buckets] == [(0, m._grads.size)]


@pytest.mark.cuda
@needs_mpi
def test_two_gpus_with_nccl_match_one(tmp_path, reference):
    import cupy
    if cupy.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs 2 GPUs")
    pytest.importorskip("cupy.cuda.nccl")
    out = tmp_path / "w.npz"
    rc, log, _ = mpirun("gpu", str(out), timeout=120)
    assert rc == 0, log
    got = np.load(out)
    for key in ("cnn", "rnn"):   # TF32 and other GPU reduction orders: a looser tolerance
        np.testing.assert_allclose(got[key], reference[key], rtol=1e-2, atol=1e-3, err_msg=key)


def test_nccl_unique_id_both_cupy_forms():
    """CuPy's get_unique_id(): a tuple of signed chars in older versions, bytes in CuPy 14
    (found on the H200): both give the same 128 bytes to broadcast."""
    from kilnet.distributed import _unique_id_bytes
    raw = bytes([10, 107, 206, 0, 2, 255, 0, 0] + [0] * 120)
    as_ints = tuple(b - 256 if b > 127 else b for b in raw)
    for form in (raw, as_ints):
        np.testing.assert_array_equal(_unique_id_bytes(form), np.frombuffer(raw, np.uint8))


@pytest.mark.cuda
def test_nccl_path_on_one_gpu_matches_plain_fit(monkeypatch):
    """The NCCL code (unique id, communicator, all-reduce of each gradient bucket on CuPy's
    stream, the guarded end-of-epoch wait) with one rank: a sum over one rank changes nothing,
    so the weights equal a plain GPU fit's. Two ranks need two GPUs (the test above)."""
    from kilnet import distributed as dist
    nccl = pytest.importorskip("cupy.cuda.nccl")
    try:
        nccl.get_version()
    except Exception as e:   # CuPy without a loadable libnccl
        pytest.skip(f"CuPy's NCCL is not usable here: {e}")
    results = []
    for distributed in (False, True):
        if distributed:
            monkeypatch.setenv("KILNET_DIST_NCCL", "1")
            monkeypatch.setenv("KILNET_BUCKET_MB", "0.01")   # several buckets: several all-reduces
        for build, data in ((worker.cnn, worker.data_cnn), (worker.rnn, worker.data_rnn)):
            m, h = worker.train(build, data, 32, distributed, device="cuda")
            results.append((m._params.get(), h["loss"]))
    assert dist._S.nccl is not None and dist.size() == 1
    for (w_plain, loss_plain), (w_nccl, loss_nccl) in zip(results[:2], results[2:]):
        np.testing.assert_array_equal(w_nccl, w_plain)
        np.testing.assert_allclose(loss_nccl, loss_plain, rtol=1e-6)
