"""Package-level promises: a fast import that loads no optional dependency, the CLI, and the
CUDA fallback."""
import os
import subprocess
import sys

import pytest

import kilnet
from kilnet import backend


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_import_loads_no_optional_dependency():
    r = _run("import sys, kilnet; bad = [m for m in ('h5py', 'cupy', 'torch', 'tqdm', 'matplotlib', "
             "'kilnet._cuda') if m in sys.modules]; print(bad)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_import_adds_under_30ms_to_numpy():
    """kilnet's own import time, numpy already loaded: the cumulative time python -X importtime
    reports for kilnet (median of 5 runs)."""
    times = []
    for _ in range(5):
        r = subprocess.run([sys.executable, "-X", "importtime", "-c", "import numpy; import kilnet"],
                           capture_output=True, text=True, timeout=60)
        line = [l for l in r.stderr.splitlines() if l.rstrip().endswith("| kilnet")][-1]
        times.append(int(line.split("|")[1]) / 1000)
    times.sort()
    assert times[2] < 30, f"import kilnet took {times} ms"


def test_cuda_fallback_is_clear():
    if backend.cuda_available():
        pytest.skip("a GPU is present")
    assert kilnet.cuda_available() is False
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        backend.cuda_module()


def test_cli_info():
    r = subprocess.run([sys.executable, "-m", "kilnet", "info"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for word in ("kilnet", "simd level in use", "threads", "cuda"):
        assert word in r.stdout
    assert kilnet.simd_level() in r.stdout


def test_cli_train_small(tmp_path):
    from kilnet.datasets import fashion_mnist
    try:
        fashion_mnist.load_data()
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST not installed")
    out = tmp_path / "m.h5"
    r = subprocess.run([sys.executable, "-m", "kilnet", "train", "--epochs", "1", "--limit", "2000",
                        "--threads", "1", "--out", str(out), "--verbose", "2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "test accuracy:" in r.stdout and out.exists()
    acc = float(r.stdout.split("test accuracy:")[1].split()[0])
    assert acc > 0.6


def test_scalar_fallback_runs():
    """KILNET_SIMD=scalar forces the portable kernels; a model still trains."""
    r = _run("import numpy as np, kilnet; from kilnet.layers import Conv2D, Flatten, Dense;"
             "from kilnet.models import Sequential; assert kilnet.simd_level() == 'scalar';"
             "m = Sequential([Conv2D(4, 3, input_shape=(8, 8, 1), activation='relu'), Flatten(), Dense(3, activation='softmax')]);"
             "m.compile(optimizer='adam', loss='sparse_categorical_crossentropy');"
             "h = m.fit(np.random.rand(64, 8, 8, 1), np.arange(64) % 3, epochs=2, verbose=0);"
             "print(h.history['loss'])", KILNET_SIMD="scalar")
    assert r.returncode == 0, r.stderr
