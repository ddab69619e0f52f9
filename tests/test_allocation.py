"""The training step allocates no array memory in steady state (DESIGN.md: layers keep their
activation and gradient buffers across batches, the last partial batch included).

numpy reports every array data allocation to tracemalloc, so after a warm-up epoch the traced
memory of a step shows any array the step creates, even one freed before the step ends (the
peak). What remains is small Python objects: views of the kept buffers, floats, the logs dict,
a few hundred bytes in all (measured here: peaks of 0.2-1.3 KB per step). The bound, 16 KB per
step, sits far above that churn and far below any buffer of the canonical model whose
reallocation it must catch: the batch of images (100 KB at batch 32, 22 KB for a last batch of
7), the conv output and the dense input gradient (2.7 MB each), the weight gradients (0.87 MB).
Buffers smaller than the bound (the 32x10 probabilities and loss gradient, the metric's scratch)
are covered by an identity check: every array the layers, fit's step and the metrics keep after
the warm-up is the very same array, at the same address, after more epochs.

Arrays that ops do allocate per call (kilnet.ops under a GradientTape) are freed and allocated
again every step: the last test checks that the process keeps that memory for reuse.
"""
import os
import platform
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import kilnet
from kilnet.callbacks import Callback

BOUND = 16 * 1024
NUMPY_DOMAIN = 389047   # numpy's tracemalloc domain (NPY_TRACE_DOMAIN)


class StepMemory(Callback):
    """Per step, from one on_train_batch_end to the next (so the batch gather, forward, backward,
    optimizer, metrics and logs all count): the net change in traced memory and the peak above
    the start. Epoch 0 is the warm-up; the first step of each later epoch is left out (it also
    holds the epoch's shuffle). Also records the layers' kept buffers after the warm-up."""

    def __init__(self, step_buffers):
        super().__init__()
        self.epoch, self.steps, self._last, self.kept = 0, [], None, None
        self.step_buffers = step_buffers

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch, self._last = epoch, None
        if epoch == 1:
            self.kept = kept_buffers(self.model, self.step_buffers)

    def on_train_batch_end(self, batch, logs=None):
        cur, peak = tracemalloc.get_traced_memory()
        if self._last is not None and self.epoch > 0:
            self.steps.append((cur - self._last, peak - self._last))
        tracemalloc.reset_peak()
        self._last = tracemalloc.get_traced_memory()[0]


def kept_buffers(model, step_buffers):
    """{(owner, key): (array, its data address)} for every buffer the layers' call states keep,
    fit's step buffers (probabilities, loss gradient) and the metrics' scratch arrays."""
    kept = {}
    for st in model._pools.values():
        kept.update({("layer", k): v for k, v in st.pool.buffers().items()})
        kept.update({("layer-act", k[0]): v for k, v in st.pool.states.items()
                     for kk, v in v.items() if kk == "act"})
        kept.update({("fit", k): v for k, v in st.bufs._bufs.items()})
    for m in model.compiled_metrics:
        kept.update({(m.name, k): v for k, v in vars(m).items() if isinstance(v, np.ndarray)})
    return {k: (v, v.ctypes.data) for k, v in kept.items()}


def spy_step_buffers(model):
    """The trainer keeps its step buffers in model._pools (read by kept_buffers)."""
    return []


def canonical(seed=0):
    from kilnet.cli import canonical_model
    kilnet.utils.set_random_seed(seed)
    return canonical_model()


def data(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, n)


@pytest.fixture
def threads():
    old = kilnet.get_num_threads()
    yield
    kilnet.set_num_threads(old)


@pytest.mark.parametrize("n", [32 * 8, 32 * 6 + 7], ids=["full-batches", "partial-last-batch"])
@pytest.mark.parametrize("nthreads", [1, 2])
def test_training_step_allocates_nothing(n, nthreads, threads):
    kilnet.set_num_threads(nthreads)
    x, y = data(n)
    model = canonical()
    cb = StepMemory(spy_step_buffers(model))
    tracemalloc.start()
    try:
        model.fit(x, y, batch_size=32, epochs=3, verbose=0, callbacks=[cb])
    finally:
        tracemalloc.stop()
    assert len(cb.steps) == 2 * (-(-n // 32) - 1)
    worst_peak = max(s[1] for s in cb.steps)
    worst_net = max(s[0] for s in cb.steps)
    assert worst_peak < BOUND, f"a training step's traced memory peaked {worst_peak} bytes above its start"
    assert worst_net < BOUND, f"a training step kept {worst_net} more bytes"
    assert sum(s[0] for s in cb.steps) < BOUND, "traced memory grows step after step"
    # the fused conv -> dense logits (unfused: conv output, dense output and input gradient);
    # the softmax output; probabilities, loss gradient; metric scratch
    assert len(cb.kept) >= 6, sorted(cb.kept)
    assert any(k[0] == "layer" for k in cb.kept), sorted(cb.kept)
    after = kept_buffers(model, cb.step_buffers)
    for key, (arr, addr) in cb.kept.items():
        assert after[key][0] is arr and after[key][1] == addr, f"buffer {key} was reallocated"


def test_no_array_survives_a_step():
    """In numpy's own domain, with tracebacks: the arrays alive after steady-state steps (a
    partial last batch among them) are the ones that were alive before."""
    n = 32 * 6 + 7
    x, y = data(n, 1)
    model = canonical()
    only_numpy = [tracemalloc.DomainFilter(True, NUMPY_DOMAIN)]
    snaps = []

    class Snap(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch in (1, -(-n // 32) - 1):   # after step 1 and the last one
                snaps.append(tracemalloc.take_snapshot().filter_traces(only_numpy))

    tracemalloc.start(5)
    try:
        model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[Snap()])
    finally:
        tracemalloc.stop()
    before, after = snaps
    grown = [d for d in after.compare_to(before, "traceback") if d.size_diff > 0 or d.count_diff > 0]
    assert not grown, "arrays created by steady-state steps are still alive:\n" + "\n".join(map(str, grown[:5]))


_STEP_OF_FREED_ARRAYS = """
import resource, sys, numpy as np
import kilnet.backend as backend
n = (4 << 20) // 4 - 2048   # just under 4 MiB: numpy asks no huge pages for it, so 4 KiB faults
def step():   # a step's worth of temporaries (attention: out, dq, dk, dv, the seed gradient)
    arrs = [np.ones(n, np.float32) for _ in range(6)]
    del arrs
step(); step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(backend.malloc_policy().split()[0], resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the malloc policy is glibc's thresholds")
def test_freed_arrays_are_reused_not_faulted_in_again():
    """After `import kilnet` the arrays a step frees are kept for the next step (glibc's mmap and
    trim thresholds, kilnet/common.h tune_malloc): five steps of 6 x 4 MiB temporaries page-fault
    almost nothing, where glibc's defaults fault them all in again (KILNET_MALLOC=system keeps
    those); glibc's own MALLOC_*_ variables win over kilnet's, and a bogus KILNET_MALLOC warns."""
    def run(**env):
        p = subprocess.run([sys.executable, "-W", "always", "-c", _STEP_OF_FREED_ARRAYS], capture_output=True,
                           text=True, timeout=120, env=dict(os.environ, **env))
        assert p.returncode == 0, p.stderr[-2000:]
        policy, faults = p.stdout.split()
        return policy, int(faults), p.stderr
    kept = run()
    system = run(KILNET_MALLOC="system")
    assert kept[0] == "kept" and system[0] == "system", (kept, system)
    assert kept[1] < 300 and system[1] > kept[1], (kept, system)
    assert run(MALLOC_TRIM_THRESHOLD_="131072")[0] == "system"
    bogus = run(KILNET_MALLOC="jemalloc")
    assert bogus[0] == "kept" and "KILNET_MALLOC='jemalloc' is not 'system'" in bogus[2], bogus
