"""Data-parallel training over MPI (mpi4py), with NCCL for the gradients on GPUs.

Launch one process per rank with Open MPI's `mpirun` (`mpirun -n 2 python train.py`, or
`mpirun -n 2 kilnet train --distributed`); in the script, `model.fit(..., distributed=True)`.

What `fit(distributed=True)` does (synchronous data parallelism, as Horovod):

- **Same start.** Ranks compare a digest of the model (layer types and configs, weight shapes,
  optimizer and loss) and of the fit arguments (sample count, batch size, epochs): a mismatch
  raises RuntimeError on every rank, naming the first difference. Rank 0 then broadcasts the
  trainable weights (the flat `_params` buffer), the non-trainable weights (BatchNormalization's
  moving statistics) and the optimizer state and step count.
- **Same data order, own shard.** Each epoch rank 0 draws the shuffled order (from kilnet's
  random generator, as a one-process fit does) and broadcasts it. `batch_size` is per rank:
  the global batch is `batch_size * size()` samples and rank r takes the r-th contiguous slice
  of each global batch. The last, partial global batch of m samples is split into slices of
  m*r//size .. m*(r+1)//size (a slice may be empty).
- **Same step.** The loss gradient kernels average over a rank's own rows, so each rank scales
  its gradients by local_n / global_n before they are summed (`Allreduce` on the flat `_grads`
  buffer, in place): the sum is the gradient of the global batch's mean loss, also for a partial
  last batch with unequal slices. Every rank then applies the identical optimizer step, so the
  weights stay identical without being sent again. The reduction is bucketed: a bucket is a
  contiguous range of `_grads` covering whole layers (backward runs last layer first), and its
  non-blocking `Iallreduce` starts as soon as backward has produced it, so communication can
  overlap the backward of the earlier layers; all are waited for before the optimizer step.
  Weight penalties (kernel_regularizer) are added after the reduction (they are the same on
  every rank).
- **Global figures.** The loss and metrics are summed over ranks (float64 `Allreduce`), so every
  rank logs the global figures; validation is sharded the same way and reduced. At the end of
  each epoch the non-trainable weights (BatchNormalization moving statistics, computed from
  each rank's own slices) are averaged over the ranks. Only rank 0 prints progress and runs the
  callbacks that write files (ModelCheckpoint, CSVLogger).
- **Faults.** An uncaught exception in any rank calls `MPI.COMM_WORLD.Abort(1)` (installed by
  `init()` as sys.excepthook) and a rank that dies makes `mpirun` kill the others (Open MPI ends
  the job when a process exits non-zero, is killed by a signal, or exits without finalizing).
  For a rank that hangs instead, every blocking wait in fit is guarded by a watchdog thread:
  when one wait lasts longer than KILNET_DIST_TIMEOUT seconds (default 300) the rank prints
  which collective it was waiting in and aborts the job.

Without MPI (mpi4py not installed, or the process not started by a launcher) `init()` gives
rank 0 of 1 and `fit(distributed=True)` trains as one process (the same weights as `fit()`).

On the GPU (model.to('cuda')) the gradient buckets are summed by NCCL (cupy.cuda.nccl) on
CuPy's current stream, one GPU per rank (the GPU index is the rank's local rank on its
machine); the rest (broadcasts, figures) goes over MPI through host memory.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time

import numpy as np

from kilnet.trainers.policy import OneProcess, verbosity

__all__ = ["init", "rank", "size", "local_rank", "is_main", "is_initialized", "barrier",
           "allreduce_mean", "check_model", "fit", "comm_seconds", "comm_timers", "use_local_gpu"]

_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "MPI_LOCALNRANKS",
                  "SLURM_STEP_NUM_TASKS", "MV2_COMM_WORLD_SIZE")


class _State:
    comm = None          # mpi4py COMM_WORLD, or _SelfComm when not under MPI
    MPI = None
    rank = 0
    size = 1
    local_rank = 0
    initialized = False
    nccl = None          # (cupy nccl communicator, device id) once made
    timeout = 300.0


_S = _State()


# ------------------------------------------------------------------------------- setup
def _under_launcher() -> bool:
    return any(v in os.environ for v in _LAUNCHER_VARS)


def _launcher_size():
    """The number of processes the launcher says it started (None when it does not say)."""
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return None


def _local_rank_from_env():
    for var in ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK", "SLURM_LOCALID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return None


def init(require_mpi: bool = False):
    """Start MPI (once) and return (rank, size). Not under mpirun (or without mpi4py): rank 0 of
    1, unless require_mpi=True, which raises RuntimeError then. Under MPI it also installs an
    excepthook that aborts the whole job on an uncaught exception in any rank."""
    if _S.initialized:
        return _S.rank, _S.size
    _S.timeout = float(os.environ.get("KILNET_DIST_TIMEOUT", "300"))
    if _under_launcher() or os.environ.get("KILNET_FORCE_MPI") == "1":
        try:
            from mpi4py import MPI
        except ImportError:
            # Several processes each training alone (and writing the same files) would be a
            # silent mistake: refuse, unless the launcher started just this one process.
            if require_mpi or _launcher_size() != 1:
                raise RuntimeError("kilnet.distributed: this process was started by an MPI launcher but "
                                   "mpi4py is not installed; pip install mpi4py (or kilnet[distributed])") from None
        else:
            comm = MPI.COMM_WORLD
            _S.MPI, _S.comm = MPI, comm
            _S.rank, _S.size = comm.Get_rank(), comm.Get_size()
            _S.local_rank = _local_rank_from_env()
            if _S.local_rank is None:   # ask MPI (a collective: every rank is in init here)
                local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=_S.rank)
                _S.local_rank = local.Get_rank()
                local.Free()
            if _S.size > 1:
                _install_excepthook()
    elif require_mpi:
        raise RuntimeError("kilnet.distributed: not started by mpirun/mpiexec (no MPI launcher in the "
                           "environment); run e.g. `mpirun -n 2 python train.py`")
    if _S.comm is None:
        _S.comm = _SelfComm()
    _S.initialized = True
    return _S.rank, _S.size


def _install_excepthook():
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        previous(exc_type, exc, tb)
        sys.stderr.write(f"kilnet.distributed: rank {_S.rank}: uncaught {exc_type.__name__}; aborting the MPI job\n")
        sys.stderr.flush()
        _S.comm.Abort(1)

    sys.excepthook = hook


def rank() -> int:
    init()
    return _S.rank


def size() -> int:
    init()
    return _S.size


def local_rank() -> int:
    """This rank's index among the ranks on its machine (the GPU it uses)."""
    init()
    return _S.local_rank


def is_main() -> bool:
    """True on rank 0 (the rank that prints and writes files)."""
    return rank() == 0


def is_initialized() -> bool:
    return _S.initialized


def barrier() -> None:
    init()
    with _watch("Barrier"):
        _S.comm.Barrier()


def allreduce_mean(values) -> np.ndarray:
    """The mean over ranks of a float array (float64; a new array), e.g. for a user's own figures."""
    init()
    a = np.ascontiguousarray(values, np.float64)
    out = np.empty_like(a)
    with _watch("Allreduce"):
        _S.comm.Allreduce(a, out, op=_sum())
    return out / _S.size


class _SelfComm:
    """The few collectives fit uses, for one process without MPI."""

    def Get_rank(self):
        return 0

    def Get_size(self):
        return 1

    def Bcast(self, buf, root=0):
        pass

    def Barrier(self):
        pass

    def Allreduce(self, sendbuf, recvbuf, op=None):
        if sendbuf is not _IN_PLACE:
            np.copyto(_arr(recvbuf), _arr(sendbuf))

    def Iallreduce(self, sendbuf, recvbuf, op=None):
        self.Allreduce(sendbuf, recvbuf, op)
        return _DoneRequest()

    def Allgather(self, sendbuf, recvbuf):
        _arr(recvbuf).reshape(-1)[:] = _arr(sendbuf).reshape(-1)

    def Abort(self, code=1):
        os._exit(code)


class _DoneRequest:
    def Wait(self):
        pass

    def Test(self):
        return True


_IN_PLACE = object()


def _arr(buf):
    return buf[0] if isinstance(buf, (list, tuple)) else buf


def _in_place():
    return _S.MPI.IN_PLACE if _S.MPI is not None else _IN_PLACE


def _sum():
    return _S.MPI.SUM if _S.MPI is not None else None


def _max():
    return _S.MPI.MAX if _S.MPI is not None else None


# ------------------------------------------------------------------------------- watchdog
class _Watchdog:
    """A daemon thread that aborts the job when one blocking wait lasts longer than the timeout
    (a rank that hangs rather than dies: mpirun only notices ranks that exit)."""

    def __init__(self):
        self.what = None
        self.deadline = None
        self.lock = threading.Lock()
        self.thread = None

    def arm(self, what):
        with self.lock:
            self.what, self.deadline = what, time.monotonic() + _S.timeout
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="kilnet-dist-watchdog", daemon=True)
            self.thread.start()

    def disarm(self):
        with self.lock:
            self.deadline = None

    def _run(self):
        while True:
            time.sleep(min(1.0, max(_S.timeout / 10, 0.05)))
            with self.lock:
                late = self.deadline is not None and time.monotonic() > self.deadline
                what = self.what
            if late:
                sys.stderr.write(f"kilnet.distributed: rank {_S.rank} waited more than {_S.timeout:g}s in "
                                 f"{what} (KILNET_DIST_TIMEOUT): another rank is hung or gone; aborting the job\n")
                sys.stderr.flush()
                threading.Timer(10.0, os._exit, (70,)).start()   # if Abort itself cannot finish
                _S.comm.Abort(70)
                os._exit(70)


_dog = _Watchdog()


class _watch:
    """`with _watch('Allreduce'): comm.Allreduce(...)`: the watchdog guards the wait (only under
    MPI with more than one rank)."""

    def __init__(self, what):
        self.what = what

    def __enter__(self):
        if _S.size > 1:
            _dog.arm(self.what)
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        if _S.size > 1:
            _dog.disarm()
        key = self.what.split(" (")[0] if self.what.startswith("Iallreduce") else "other collectives"
        _timers[key] = _timers.get(key, 0.0) + time.perf_counter() - self.t0
        return False


_timers: dict = {}


def comm_timers() -> dict:
    """Seconds spent in blocking MPI calls since the process started, by kind: 'Iallreduce wait'
    (the gradient buckets, before each optimizer step) and 'other collectives' (broadcasts,
    figures, checks). For benchmarks."""
    return dict(_timers)


# ------------------------------------------------------------------------------- consistency
def _strip_names(obj):
    if isinstance(obj, dict):
        return {k: _strip_names(v) for k, v in obj.items() if k != "name"}
    if isinstance(obj, list):
        return [_strip_names(v) for v in obj]
    return obj


def _signature(model, fit_args=None) -> list:
    """One line per thing that must agree across ranks."""
    lines = []
    lines.append(f"number of layers: {len(model.layers)}")
    for i, layer in enumerate(model.layers):
        what = f"layer {i} ({type(layer).__name__})"
        shapes = ", ".join(f"{s.attr}{tuple(s.shape)}{'' if s.trainable and layer.trainable else ' frozen'}"
                           for s in layer._specs)
        lines.append(f"{what} weights: {shapes or 'none'}")
        for key, value in sorted(_strip_names(layer.get_config()).items()):
            lines.append(f"{what} {key}: {json.dumps(value, sort_keys=True, default=str)}")
    lines.append(f"input shape: {tuple(model.input_shape or ())}")
    lines.append(f"trainable parameters: {model._params.size}")
    if model.optimizer is not None:
        opt = json.dumps(_strip_names(model.optimizer.get_config()), sort_keys=True, default=str)
        lines.append(f"optimizer: {type(model.optimizer).__name__} {opt}")
    if model.loss is not None:
        lines.append(f"loss: {type(model.loss).__name__} {json.dumps(_strip_names(getattr(model.loss, 'get_config', dict)()), sort_keys=True, default=str)}")
    lines.append(f"device: {model.device}")
    for k, v in (fit_args or {}).items():
        lines.append(f"fit {k}: {v}")
    return lines


_DESC_BYTES = 65536


def check_model(model, fit_args=None) -> None:
    """Raise RuntimeError on every rank when the ranks' models (or fit arguments) differ.

    Allgathers a 32-byte digest; only when digests differ, a fixed-size text description, so
    that each rank can name the first difference with rank 0."""
    init()
    if _S.size == 1:
        return
    lines = _signature(model, fit_args)
    digest = np.frombuffer(hashlib.sha256("\n".join(lines).encode()).digest(), np.uint8).copy()
    every = np.empty((_S.size, digest.size), np.uint8)
    with _watch("Allgather (model check)"):
        _S.comm.Allgather(digest, every)
    if (every == every[0]).all():
        return
    text = "\n".join(lines).encode()[:_DESC_BYTES]
    mine = np.zeros(_DESC_BYTES, np.uint8)
    mine[:len(text)] = np.frombuffer(text, np.uint8)
    descs = np.empty((_S.size, _DESC_BYTES), np.uint8)
    with _watch("Allgather (model check)"):
        _S.comm.Allgather(mine, descs)
    ref = descs[0].tobytes().rstrip(b"\0").decode(errors="replace").split("\n")
    problems = []
    for r in range(1, _S.size):
        if (every[r] == every[0]).all():
            continue
        other = descs[r].tobytes().rstrip(b"\0").decode(errors="replace").split("\n")
        diffs = [i for i in range(max(len(ref), len(other)))
                 if i >= len(ref) or i >= len(other) or ref[i] != other[i]][:3]
        shown = "".join(f"\n  rank 0: {_short(ref[i] if i < len(ref) else '(nothing)')}"
                        f"\n  rank {r}: {_short(other[i] if i < len(other) else '(nothing)')}" for i in diffs)
        problems.append(f"rank {r} differs from rank 0 (first differences):{shown or ' (in the truncated part)'}")
    raise RuntimeError("kilnet.distributed: the ranks do not train the same model (every rank must build "
                       "the same architecture and call fit with the same data, in the same order, and arguments)\n"
                       + "\n".join(problems))


def _short(s, n=300):
    return s if len(s) <= n else s[:n] + " ..."


# ------------------------------------------------------------------------------- host copies
def _host(a):
    return a if isinstance(a, np.ndarray) else a.get()


def _bcast_array(a):
    """Broadcast an array from rank 0 in place (numpy directly; a CuPy array through the host)."""
    if isinstance(a, np.ndarray):
        with _watch("Bcast"):
            _S.comm.Bcast(a if a.flags.c_contiguous else np.ascontiguousarray(a), root=0)
        return
    h = np.ascontiguousarray(a.get())
    with _watch("Bcast"):
        _S.comm.Bcast(h, root=0)
    a.set(h)


def _non_trainable(model):
    in_flat = {(id(l), a) for l, a, _, _ in model._slices}
    return [(l, s.attr) for l in model.layers for s in l._specs
            if (id(l), s.attr) not in in_flat and np.dtype(getattr(l, s.attr).dtype).kind == "f"]


def broadcast_state(model) -> None:
    """Rank 0's trainable and non-trainable weights and optimizer state, to every rank."""
    if _S.size == 1:
        return
    _bcast_array(model._params)
    for layer, attr in _non_trainable(model):
        w = getattr(layer, attr)
        if isinstance(w, np.ndarray) and not w.flags.c_contiguous:
            w = np.ascontiguousarray(w)
            setattr(layer, attr, w)
        _bcast_array(w)
    opt = model.optimizer
    it = np.array([opt.iterations], np.int64)
    with _watch("Bcast"):
        _S.comm.Bcast(it, root=0)
    opt.iterations = int(it[0])
    for slot in sorted(opt.state):
        _bcast_array(opt.state[slot])


def average_non_trainable(model) -> None:
    """Average the floating non-trainable weights (moving statistics) over the ranks."""
    if _S.size == 1:
        return
    for layer, attr in _non_trainable(model):
        w = getattr(layer, attr)
        h = np.ascontiguousarray(_host(w), np.float64)
        out = np.empty_like(h)
        with _watch("Allreduce (moving statistics)"):
            _S.comm.Allreduce(h, out, op=_sum())
        out /= _S.size
        if isinstance(w, np.ndarray):
            w[...] = out
        else:
            w.set(out.astype(w.dtype))


# ------------------------------------------------------------------------------- gradient sync
_comm_seconds = [0.0]


def comm_seconds() -> float:
    """Seconds spent waiting for gradient reductions since the process started (benchmarks)."""
    return _comm_seconds[0]


class GradientSync:
    """Sums the gradient buffer over ranks in buckets while backward runs.

    The model calls `layer_done(i)` after layer i's backward and `finish()` before the
    optimizer step (models.py hooks, active while `model._grad_sync` is set). Buckets are
    contiguous ranges of `_grads` made of whole layers, cut when they reach bucket_bytes."""

    def __init__(self, model, bucket_bytes=None):
        if bucket_bytes is None:
            bucket_bytes = int(float(os.environ.get("KILNET_BUCKET_MB", "0.5")) * 2**20)
        self.model = model
        self.grads = model._grads
        n_layers = len(model.layers)
        spans = {}   # layer index -> [lo, hi) in _grads
        index = {id(l): i for i, l in enumerate(model.layers)}
        for i, l in enumerate(model.layers):   # TimeDistributed: its inner layer owns the weights
            inner = getattr(l, "layer", None)
            if inner is not None and hasattr(inner, "_specs") and id(inner) not in index:
                index[id(inner)] = i
        self.index = index
        for layer, _, off, size in model._slices:
            i = index[id(layer)]
            lo, hi = spans.get(i, (off, off + size))
            spans[i] = (min(lo, off), max(hi, off + size))
        # Buckets from the last layer down: backward produces them in this order.
        self.buckets = []             # (lo, hi, lowest layer index)
        cur = None
        limit = max(1, bucket_bytes // 4)
        for i in range(n_layers - 1, -1, -1):
            if i not in spans:
                continue
            lo, hi = spans[i]
            if cur is None:
                cur = [lo, hi, i]
            else:
                assert hi == cur[0], "a layer's gradients must sit right before the next layer's"
                cur[0], cur[2] = lo, i
            if cur[1] - cur[0] >= limit:
                self.buckets.append(tuple(cur))
                cur = None
        if cur is not None:
            self.buckets.append(tuple(cur))
        self.start_at = {b[2]: k for k, b in enumerate(self.buckets)}
        self.on_gpu = model.device != "cpu"
        # NCCL for more than one rank; KILNET_DIST_NCCL=1 also for one, which checks a single-GPU
        # machine's NCCL setup (id broadcast, communicator, all-reduce on kilnet's stream)
        self.nccl = _nccl_comm() if (self.on_gpu and (_S.size > 1 or os.environ.get("KILNET_DIST_NCCL") == "1")) else None
        self.requests = []
        self.started = 0
        self.scale = 1.0

    def begin(self, local_n, global_n):
        """Before a step: this rank's and the global batch's number of samples."""
        self.scale = local_n / global_n if global_n else 0.0
        self.requests = []
        self.started = 0

    def layer_object_done(self, layer):
        """The tape's walk finished `layer`'s backward: its weight gradients are final."""
        i = self.index.get(id(layer))
        if i is not None:
            self.layer_done(i)

    def layer_done(self, i):
        k = self.start_at.get(i)
        if k is not None:
            while self.started <= k:
                self._start(self.started)
        if self.requests:
            # Open MPI progresses non-blocking collectives only inside MPI calls: one test per layer
            _S.MPI.Request.Testall(self.requests)

    def _start(self, k):
        lo, hi, _ = self.buckets[k]
        g = self.grads[lo:hi]
        if self.scale != 1.0:
            g *= np.float32(self.scale)
        self.started += 1
        if self.nccl is not None:
            _nccl_allreduce(self.nccl, g)
            return
        if _S.size == 1:
            return
        self.requests.append(_S.comm.Iallreduce(_in_place(), g, op=_sum()))

    def start_all(self):
        while self.started < len(self.buckets):
            self._start(self.started)

    def finish(self):
        """Wait for every bucket: afterwards _grads holds the global batch's gradient."""
        self.start_all()
        if not self.requests:
            return
        t0 = time.perf_counter()
        with _watch("Iallreduce wait (gradients)"):
            _S.MPI.Request.Waitall(self.requests)
        dt = time.perf_counter() - t0
        _comm_seconds[0] += dt
        self.requests = []


# ------------------------------------------------------------------------------- NCCL (GPU)
def _nccl_comm():
    """A NCCL communicator over all ranks (made once): rank 0's unique id goes out over MPI."""
    if _S.nccl is not None:
        return _S.nccl
    import cupy
    try:
        from cupy.cuda import nccl
        nccl.get_version()
    except Exception as e:   # ImportError, or CuPy built without NCCL
        raise RuntimeError("kilnet.distributed: training on GPUs over several ranks needs NCCL through CuPy "
                           f"(cupy.cuda.nccl): {e}; install NCCL (e.g. pip install nvidia-nccl-cu12)") from None
    uid = np.zeros(128, np.uint8)   # NCCL_UNIQUE_ID_BYTES
    if _S.rank == 0:
        uid[:] = _unique_id_bytes(nccl.get_unique_id())
    with _watch("Bcast (NCCL id)"):
        _S.comm.Bcast(uid, root=0)
    dev = cupy.cuda.Device().id
    with _watch("NCCL communicator setup"):   # blocks until every rank has joined
        try:   # CuPy 14 takes the id as bytes, older CuPy as a tuple of signed chars
            comm = nccl.NcclCommunicator(_S.size, uid.tobytes(), _S.rank)
        except TypeError:
            comm = nccl.NcclCommunicator(_S.size, tuple(int(v) for v in uid.view(np.int8)), _S.rank)
    _S.nccl = (comm, dev)
    return _S.nccl


def _unique_id_bytes(raw):
    """The 128 bytes of a cupy.cuda.nccl.get_unique_id(): bytes in CuPy 14 (seen on the H200),
    a tuple of signed chars in older CuPy."""
    if isinstance(raw, (bytes, bytearray)):
        return np.frombuffer(bytes(raw), np.uint8)
    return np.array([int(v) & 0xFF for v in raw], np.uint8)


def _nccl_allreduce(nc, g):
    """In-place sum of the CuPy array g over ranks, on CuPy's current stream (no host wait)."""
    import cupy
    from cupy.cuda import nccl
    comm, _ = nc
    stream = cupy.cuda.get_current_stream()
    comm.allReduce(g.data.ptr, g.data.ptr, g.size, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, stream.ptr)


def use_local_gpu() -> int:
    """Make GPU local_rank() (modulo the visible GPUs) CuPy's current device; returns its index.
    Call before building the model on 'cuda' (fit(distributed=True) calls it for you)."""
    import cupy
    init()
    n = cupy.cuda.runtime.getDeviceCount()
    dev = _S.local_rank % n
    cupy.cuda.Device(dev).use()
    return dev


# ------------------------------------------------------------------------------- fit
def _shard(lo, hi):
    """This rank's contiguous slice [a, b) of the global batch [lo, hi)."""
    m = hi - lo
    return lo + m * _S.rank // _S.size, lo + m * (_S.rank + 1) // _S.size


def _reduce_sum(values):
    a = np.asarray(values, np.float64)
    if _S.size == 1:
        return a
    out = np.empty_like(a)
    with _watch("Allreduce (loss and metrics)"):
        _S.comm.Allreduce(a, out, op=_sum())
    return out


def _any_rank(flag) -> bool:
    if _S.size == 1:
        return bool(flag)
    a = np.array([1 if flag else 0], np.int32)
    out = np.empty_like(a)
    with _watch("Allreduce (stop flag)"):
        _S.comm.Allreduce(a, out, op=_max())
    return bool(out[0])


def _metric_state(metrics):
    out = []
    for m in metrics:
        m.result()   # folds a GPU running total into m.total
        out += [m.total, m.count]
    return out


def _global_logs(loss_sum, seen, metrics):
    v = _reduce_sum([loss_sum, seen] + _metric_state(metrics))
    logs = {"loss": float(v[0] / max(v[1], 1))}
    for k, m in enumerate(metrics):
        total, count = v[2 + 2 * k], v[3 + 2 * k]
        logs[m.name] = float(total / count) if count else 0.0
    return logs


def _empty_step(model):
    """A step for a rank whose slice of the (last) global batch is empty: zero gradients, still
    part of the reduction and the optimizer step."""
    from kilnet import regularizers as regularizers_mod
    model._grads.fill(0.0)
    model._grad_sync.finish()
    loss = regularizers_mod.penalties(model.layers, grads=True, grad_scale=getattr(model.optimizer, "dynamic_scale", None)) \
        if model.trainable else 0.0
    model.optimizer.apply(model._params, model._grads)
    return loss


def _data_digest(x, y, k=4096):
    """A digest of k evenly spaced values of x and y: catches ranks that load different data (or
    the same data in another order) without hashing all of it."""
    h = hashlib.sha256()
    for a in (x, y):
        flat = a.reshape(-1)
        idx = np.linspace(0, flat.size - 1, min(k, flat.size)).astype(np.int64)
        h.update(np.ascontiguousarray(flat[idx]).tobytes())
    return h.hexdigest()[:16]


def _evaluate_sharded(model, prepared, batch_size, evaluate_fn):
    """Validation figures over all ranks: each evaluates its contiguous slice, then a sum.
    prepared: the trainer's inputs (arrays and structure), prepared targets per output and
    sample weights per output (or None)."""
    import copy
    x, ys, sws = prepared
    n = x.n
    a, b = n * _S.rank // _S.size, n * (_S.rank + 1) // _S.size
    if b > a:
        part = copy.copy(x)
        part.arrays, part.n = [arr[a:b] for arr in x.arrays], b - a
        vals = evaluate_fn(model, (part, [None if t is None else t[a:b] for t in ys],
                                   None if sws is None else [None if w is None else w[a:b] for w in sws]),
                           batch_size)
    else:
        vals = [0.0] * (1 + len(model.compiled_metrics))
    tot = _reduce_sum([v * (b - a) for v in vals])
    return [float(v) for v in tot / n]


def prepare_fit(model, data, batch_size, epochs, initial_epoch, shuffle):
    """fit(..., distributed=True) asks this after checking the data: every rank agrees on the
    model and data, rank 0's state goes out, and the _Rank returned tells the trainer's epoch
    loop (the same as a one-process fit) the order, the shards and the global figures."""
    # by name: distributed sits below models (the trainer asks it for a _Rank)
    if not any(c.__name__ == "Sequential" for c in type(model).__mro__):
        raise ValueError("fit(distributed=True) supports Sequential models for now; a functional or "
                         "subclassed model trains on one process")
    init()
    if model.device != "cpu" and _S.size > 1:
        import cupy
        if cupy.cuda.Device().id != _S.local_rank % cupy.cuda.runtime.getDeviceCount():
            raise RuntimeError(f"kilnet.distributed: rank {_S.rank} (local rank {_S.local_rank}) trains on GPU "
                               f"{cupy.cuda.Device().id}; call kilnet.distributed.use_local_gpu() before building "
                               "the model so that each rank has its own GPU")
    x, y = data.inputs.arrays[0], data.ys[0]
    val = data.val
    n = data.n
    check_model(model, {"samples": n, "sample shape": tuple(x.shape[1:]), "data digest": _data_digest(x, y),
                        "batch_size": batch_size,
                        "epochs": epochs, "initial_epoch": initial_epoch, "shuffle": bool(shuffle),
                        "validation samples": None if val is None else val[0].n})
    broadcast_state(model)
    return _Rank(n, batch_size)


class _Rank(OneProcess):
    """One rank's side of fit's epoch loop: batch_size is per rank, so a step is a global batch
    of batch_size * size() samples of which this rank trains on its slice (_shard)."""

    def __init__(self, n, batch_size):
        super().__init__(n, batch_size * _S.size)
        self.params = {"world_size": _S.size, "global_batch_size": self.global_batch}
        self.order_buf = np.empty(n, np.int64)

    def verbosity(self, verbose):
        verbose = verbosity(verbose)
        return verbose if _S.rank == 0 else 0   # only rank 0 prints

    def callbacks(self, cbs):
        from kilnet.callbacks import CSVLogger, ModelCheckpoint
        if _S.rank == 0:
            return cbs
        return [cb for cb in cbs if not isinstance(cb, (ModelCheckpoint, CSVLogger))]   # rank 0 writes files

    def any_rank(self, flag) -> bool:
        return _any_rank(flag)

    def start(self, model, batch_logs_wanted, verbose):
        super().start(model, batch_logs_wanted, verbose)
        # Global running figures after every step cost a small Allreduce per step: only for
        # callbacks that look at them or for rank 0's live progress bar; else once per epoch.
        # Decided on every rank alike, so that all ranks make the same collectives.
        self.step_logs = _any_rank(batch_logs_wanted or (verbose == 1 and sys.stdout.isatty()))
        self.sync = GradientSync(model)
        model._grad_sync = self.sync

    def order(self, rng, shuffle):
        if not shuffle:
            return np.arange(self.n)
        if _S.rank == 0:   # rank 0 draws, as a one-process fit would, and every rank follows
            self.order_buf[:] = rng.permutation(self.n)
        with _watch("Bcast (epoch order)"):
            _S.comm.Bcast(self.order_buf, root=0)
        return self.order_buf

    def begin_step(self, step):
        lo, hi = super().begin_step(step)
        a, b = _shard(lo, hi)
        self.sync.begin(b - a, hi - lo)
        return a, b

    def empty_step(self, model):
        return _empty_step(model)

    def logs_due(self, step, bar) -> bool:
        return self.step_logs and (not self.on_gpu or self.batch_logs_wanted)

    def logs(self, loss_sum, seen, metrics):
        return _global_logs(loss_sum, seen, metrics)

    def stop_after_step(self, model) -> bool:
        if not self.batch_logs_wanted:   # stop_training is only looked at per step when a callback can set it
            return False
        model.stop_training = _any_rank(model.stop_training)
        return model.stop_training

    def fetch(self, dev_losses):
        with _watch("GPU stream (NCCL gradient reductions)"):   # waits for the epoch's GPU work
            return dev_losses.get()

    def epoch_end(self, model):
        average_non_trainable(model)

    def evaluate(self, model, prepared, batch_size, evaluate_fn):
        return _evaluate_sharded(model, prepared, batch_size, evaluate_fn)

    def finish(self, model):
        model._grad_sync = None
