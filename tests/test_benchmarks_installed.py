"""Every CPU script in benchmarks/ runs from an installed kilnet, from a directory outside the
repository, without reaching into the source tree (python/): a tiny real run of each (its
quickest options), not just --help. Performance is not checked here, only that the script runs
to its table with the header every script prints (CPU model, SIMD flags) and, where it reports
"% of peak", the FMA peak it measured at the start.

Which kilnet: the one this test process imported. Installed (CI: pip install .), it is used as
it is; the in-place build (PYTHONPATH=python) is copied into a temporary directory first, as an
install would. Either way python/ is off PYTHONPATH, and a sitecustomize.py put first on the
children's path fails any Python process (the script and the workers it starts) that ends with
a module of python/ loaded.

The GPU scripts (bench_gpu_*.py) need a GPU and are run by benchmarks/gpu_check.sh instead.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
SOURCE = REPO / "python"
HAVE_TORCH = importlib.util.find_spec("torch") is not None

GUARD = '''\
import atexit, os, sys
_SOURCE = {source!r}

def _kilnet_source_guard():
    bad = sorted(name for name, mod in list(sys.modules.items())
                 if (getattr(mod, "__file__", None) or "").startswith(_SOURCE + os.sep))
    if bad:
        sys.stderr.write("imported from the source tree %s: %s\\n" % (_SOURCE, ", ".join(bad[:10])))
        sys.stderr.flush()
        os._exit(86)

atexit.register(_kilnet_source_guard)
'''

# script, arguments of its quickest real run, needs (torch / data / mpi), lines its output must hold
CASE = {
    "bench_gemm.py": (["--threads", "1", "--rounds", "1", "--seconds", "0.01", "--only", "conv fwd"], (),
                      ["measured FMA peak", "conv fwd"]),
    "bench_gemm_bf16.py": (["--threads", "1", "--rounds", "1", "--seconds", "0.01", "--sizes", "64"], (),
                           ["measured FMA peak", "kilnet bf16 path"]),
    "bench_mixed_precision.py": (["--threads", "1", "--rounds", "1", "--steps", "1", "--batch", "8", "--units", "16",
                                  "32", "4", "--transformer", "--transformer-steps", "1"], ("torch",),
                                 ["kilnet bf16 path", "| 1 | ", "validation bits/char after 1 steps"]),
    "bench_conv2d.py": (["--reps", "1", "--rounds", "1", "--threads", "1"], (), ["measured FMA peak", "| mid "]),
    "bench_rnn.py": (["speed", "--threads", "1", "--rounds", "1", "--layers", "SimpleRNN", "--no-torch"], (),
                     ["measured FMA peak", "SimpleRNN"]),
    "bench_epoch.py": (["--epochs", "1", "--threads", "1", "--limit", "256", "--no-torch"], ("data",),
                       ["measured FMA peak", "threads=1: kilnet"]),
    "bench_attention.py": (["--threads", "1", "--T", "32", "--rounds", "1", "--iters", "1", "--mem-T", "64", "--bf16"],
                           ("torch",), ["| 1 | 32 | no |", "kilnet: ", "kilnet bf16 path"]),
    "bench_conv1d.py": (["--reps", "1", "--rounds", "1", "--threads", "1", "--case", "B24 T173 C67->45 k7 valid (odd)"],
                        ("torch",), ["| B24 T173"]),
    "bench_layernorm.py": (["--threads", "1", "--runs", "1"], ("torch",), ["1000x300"]),
    "bench_embedding.py": (["--threads", "1", "--runs", "1"], ("torch",), ["zipf"]),
    "bench_char_transformer.py": (["--steps", "2", "--eval-every", "1", "--batch", "2", "--context", "8",
                                   "--width", "8", "--heads", "2", "--blocks", "1", "--max-bytes", "20000",
                                   "--threads", "1"], ("torch",), ["threads 1: kilnet"]),
    "bench_data_pipelines.py": (["--threads", "1", "--samples", "192", "--rounds", "1"], ("data",),
                                ["threads 1  arrays"]),
    "bench_engine.py": (["--threads", "1", "--samples", "192", "--rounds", "1", "--reps", "1"], ("data",),
                        ["functional"]),
    "bench_memory.py": (["--limit", "192", "--threads", "1"], ("data", "torch"), ["kilnet / PyTorch peak"]),
    "bench_small_cnn.py": (["--epochs", "1", "--limit", "128", "--threads", "1", "--frameworks", "kilnet"], ("data",),
                           ["kilnet: "]),
    "bench_distributed.py": (["--limit", "128", "--epochs", "2", "--rounds", "1", "--only", "1x2 b32"],
                             ("data", "mpi"), ["| 1x2 b32 |"]),
    "bench_dpsgd.py": (["--limit", "256", "--epochs", "1", "--batch", "32"], ("data", "torch"),
                       ["batch   32: kilnet plain"]),
    "dp_accuracy.py": (["--epochs", "1", "--limit", "512", "--batch", "64"], ("data",), ["epoch  1: epsilon"]),
    "accuracy_seeds.py": (["--epochs", "1", "--limit", "128"], ("data",), ['"library": "kilnet"']),
    "bench_neighbours.py": (["--quick", "--threads", "1", "--policies", "after"], (), ["| 1 | after | numpy+kilnet |"]),
    "bench_agreement.py": (["--threads", "1", "--only", "activation", "--rounds", "1"], (), ["agreement: "]),
}
HELPERS = ["machine_info.py", "subprocess_bench.py", "gpu_timing.py"]   # imported by the scripts


def test_every_cpu_script_is_listed():
    scripts = {p.name for p in BENCH.glob("*.py")}
    gpu = {s for s in scripts if s.startswith("bench_gpu_")}
    assert scripts - gpu - set(HELPERS) == set(CASE), "add the new benchmark script to CASE"


def test_no_script_puts_the_sources_on_sys_path():
    for p in BENCH.glob("*.py"):
        text = p.read_text()
        assert '"python")' not in text and "'python')" not in text, p.name


def _data_available():
    try:
        from kilnet.datasets import fashion_mnist
        return fashion_mnist.load_data() is not None
    except (FileNotFoundError, OSError):
        return False


@pytest.fixture(scope="module")
def installed_env(tmp_path_factory):
    """The environment of a run from the installed package, and a working directory outside
    the repository."""
    import kilnet
    root = tmp_path_factory.mktemp("installed")
    guard = root / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD.format(source=str(SOURCE)))
    path = [str(guard)]
    pkg = Path(kilnet.__file__).resolve().parent
    if SOURCE in pkg.parents:   # the in-place build: an install of it, by copy
        site = root / "site"
        shutil.copytree(pkg, site / "kilnet", ignore=shutil.ignore_patterns("__pycache__"))
        path.append(str(site))
    keep = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
            if p and Path(p).resolve() != SOURCE and SOURCE not in Path(p).resolve().parents]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path + keep), PYTHONDONTWRITEBYTECODE="1")
    env.pop("KILNET_SIMD", None)
    work = root / "work"
    work.mkdir()
    return env, work


def _run(env, cwd, args, timeout=120):
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_guard_catches_the_source_tree(installed_env):
    """The check itself: a process that imports kilnet from python/ fails."""
    env, work = installed_env
    code = f"import sys; sys.path.insert(0, {str(SOURCE)!r}); import kilnet._version"
    r = _run(env, work, ["-c", code])
    assert r.returncode == 86 and "imported from the source tree" in r.stderr, (r.returncode, r.stderr)
    r = _run(env, work, ["-c", "import kilnet, sys; print(kilnet.__file__)"])
    assert r.returncode == 0, r.stderr
    assert not r.stdout.strip().startswith(str(SOURCE)), r.stdout


@pytest.mark.parametrize("helper", HELPERS)
def test_helpers_import(installed_env, helper):
    env, work = installed_env
    r = _run(env, work, ["-c", f"import sys; sys.path.insert(0, {str(BENCH)!r}); import {helper[:-3]}"])
    assert r.returncode == 0, r.stderr


def test_machine_info_peak_is_measured(installed_env):
    env, work = installed_env
    code = (f"import sys; sys.path.insert(0, {str(BENCH)!r}); import machine_info as m; "
            "p = m.peaks([1], seconds=0.02); print(m.machine()); print(m.peak_line(p)); assert p[1] > 0")
    r = _run(env, work, ["-c", code])
    assert r.returncode == 0, r.stderr
    assert "SIMD flags" in r.stdout and "measured FMA peak" in r.stdout, r.stdout


def _missing(needs):
    if "torch" in needs and not HAVE_TORCH:
        return "needs torch"
    if "mpi" in needs and (shutil.which("mpirun") is None or importlib.util.find_spec("mpi4py") is None):
        return "needs Open MPI's mpirun and mpi4py"
    if "data" in needs and not _data_available():
        return "Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"
    return None


@pytest.fixture(scope="module")
def script_runs(installed_env, request):
    """The selected scripts' runs, two at a time (each runs on one thread: on a 2-core machine
    this halves the wall time): {script: CompletedProcess, or the reason it was not run}."""
    from concurrent.futures import ThreadPoolExecutor
    env, work = installed_env
    selected = sorted({item.callspec.params["script"] for item in request.session.items
                       if item.originalname == "test_script_runs_from_the_installed_package"})
    out = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        for script in selected:
            args, needs, _ = CASE[script]
            why = _missing(needs)
            out[script] = why or pool.submit(_run, env, work, [str(BENCH / script), *args], 300)
    return {k: v if isinstance(v, str) else v.result() for k, v in out.items()}


@pytest.mark.parametrize("script", sorted(CASE))
def test_script_runs_from_the_installed_package(script_runs, script):
    _, _, expect = CASE[script]
    r = script_runs[script]
    if isinstance(r, str):
        pytest.skip(r)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "SIMD flags" in out, out[-4000:]   # the header: CPU model and SIMD flags
    for line in expect:
        assert line in out, out[-4000:]
