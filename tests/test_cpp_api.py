"""kilnet without Python (issue 10): the C++ library, its C API, find_package(kilnet), the
examples in examples/cpp, and model.export_weights.

The compiled tests build the library from this checkout with CMake (no Python module, no CUDA),
install it the way a wheel lays it out (<site>/kilnet/{include,lib,lib/cmake/kilnet}) next to a
copy of the kilnet package, ask `python -m kilnet --cmake-dir` where it is, build examples/cpp
against it with find_package, and run them: train_mlp must learn, and infer must reproduce
model.predict. A C program (compiled with cc, and as a C-only CMake project) and ctypes check
the C API's error path. When kilnet itself is a wheel install, the examples are also built
against the C++ package the wheel ships. They skip when cmake or a C/C++ compiler is missing.
About 35 s on 2 cores (45 s with the wheel check), most of it compiling.
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import kilnet
from kilnet import _cpu
from kilnet.export import ACTIVATION_CODES, LAYER_TYPES, MAGIC
from kilnet.layers import Activation, Conv2D, Dense, Flatten, Layer
from kilnet.models import Sequential
from kilnet.utils import set_random_seed

ROOT = Path(__file__).resolve().parents[1]


def _find_cmake():
    path = shutil.which("cmake")
    if path:
        return path
    try:   # the `cmake` package from PyPI (pip install cmake)
        import cmake
        return os.path.join(cmake.CMAKE_BIN_DIR, "cmake")
    except ImportError:
        return None


def _find(env, *names):
    if os.environ.get(env):
        return os.environ[env]
    return next((shutil.which(n) for n in names if shutil.which(n)), None)


CMAKE = _find_cmake()
NINJA = shutil.which("ninja")
CXX = _find("CXX", "c++", "g++", "clang++")
CC = _find("CC", "cc", "gcc", "clang")
HAVE_SOURCES = (ROOT / "CMakeLists.txt").exists() and (ROOT / "examples" / "cpp" / "CMakeLists.txt").exists()

needs_toolchain = pytest.mark.skipif(
    not (CMAKE and CXX and CC and HAVE_SOURCES),
    reason="needs cmake, a C and a C++ compiler, and the kilnet source tree")


def _run(cmd, timeout=300, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _generator():
    return ["-G", "Ninja"] if NINJA else []


def _env_with_pythonpath(path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(path)
    return env


# ------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """kilnet's C++ library built from this checkout and installed as a wheel lays it out:
    <site>/kilnet/{include, lib, lib/cmake/kilnet}, beside a copy of the Python package."""
    base = tmp_path_factory.mktemp("cpp")
    build, site = base / "build", base / "site"
    _run([CMAKE, "-S", ROOT, "-B", build, *_generator(), "-DCMAKE_BUILD_TYPE=Release",
          "-DKILNET_PYTHON=OFF", "-DKILNET_CUDA=OFF", "-DCMAKE_INSTALL_LIBDIR=lib",
          f"-DCMAKE_CXX_COMPILER={CXX}"])
    _run([CMAKE, "--build", build, "-j", "2"], timeout=900)
    _run([CMAKE, "--install", build, "--prefix", site / "kilnet"])
    # The Python package (whichever is imported: the source tree or an installed wheel) without
    # any C++ files of its own, so the install above is the only one.
    shutil.copytree(Path(kilnet.__file__).parent, site / "kilnet", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "include", "lib"))
    return site


@pytest.fixture(scope="module")
def cmake_dir(site):
    r = _run([sys.executable, "-m", "kilnet", "--cmake-dir"], env=_env_with_pythonpath(site), cwd=site)
    return Path(r.stdout.strip())


def _build_examples(dest, cmake_dir, *extra):
    _run([CMAKE, "-S", ROOT / "examples" / "cpp", "-B", dest, *_generator(), f"-Dkilnet_DIR={cmake_dir}",
          f"-DCMAKE_CXX_COMPILER={CXX}", *extra])
    _run([CMAKE, "--build", dest, "-j", "2"], timeout=600)
    exe = ".exe" if os.name == "nt" else ""
    return {"infer": dest / f"infer{exe}", "train_mlp": dest / f"train_mlp{exe}"}


@pytest.fixture(scope="module")
def examples(cmake_dir, tmp_path_factory):
    return _build_examples(tmp_path_factory.mktemp("examples"), cmake_dir)


@pytest.fixture(scope="module")
def libkilnet(site):
    lib = ctypes.CDLL(str(site / "kilnet" / "lib" / "libkilnet.so"))
    lib.kilnet_last_error.restype = ctypes.c_char_p
    lib.kilnet_status_name.restype = ctypes.c_char_p
    lib.kilnet_version.restype = ctypes.c_char_p
    lib.kilnet_simd_level.restype = ctypes.c_char_p
    return lib


# ------------------------------------------------------------------------------- install, CLI
@needs_toolchain
def test_install_layout(site):
    k = site / "kilnet"
    for rel in ("include/kilnet/c_api.h", "include/kilnet/kilnet.h", "include/kilnet/version.h",
                "include/kilnet/gemm.h", "include/kilnet/conv2d.h", "include/kilnet/detail/elementwise.h",
                "lib/libkilnet.a", "lib/libkilnet.so", "lib/cmake/kilnet/kilnetConfig.cmake",
                "lib/cmake/kilnet/kilnetConfigVersion.cmake", "lib/cmake/kilnet/kilnetStaticTargets.cmake",
                "lib/cmake/kilnet/kilnetSharedTargets.cmake"):
        assert (k / rel).exists(), rel
    # The public headers name no CUDA type.
    for h in (k / "include" / "kilnet").rglob("*.h"):
        assert not re.search(r"\bcuda\w*_t\b|cuda_runtime", h.read_text()), h


@needs_toolchain
def test_cmake_dir_points_at_the_package(site, cmake_dir):
    assert cmake_dir == site / "kilnet" / "lib" / "cmake" / "kilnet"
    assert (cmake_dir / "kilnetConfig.cmake").exists()
    env = _env_with_pythonpath(site)
    for opt, want in (("--prefix", site / "kilnet"), ("--include-dir", site / "kilnet" / "include"),
                      ("--lib-dir", site / "kilnet" / "lib")):
        r = _run([sys.executable, "-m", "kilnet", opt], env=env, cwd=site)
        assert Path(r.stdout.strip()) == want


def test_cmake_dir_cli():
    """An in-place build has no C++ package: a clear error. A wheel install has one."""
    from kilnet import _cmake
    r = subprocess.run([sys.executable, "-m", "kilnet", "--cmake-dir"], capture_output=True, text=True, timeout=60)
    if (Path(kilnet.__file__).parent / "lib" / "cmake" / "kilnet" / "kilnetConfig.cmake").exists():
        assert r.returncode == 0, r.stderr
        assert Path(r.stdout.strip()) == Path(_cmake.cmake_dir())
    else:
        assert r.returncode == 1
        assert "kilnetConfig.cmake" in r.stderr and "cmake --install" in r.stderr
    r = subprocess.run([sys.executable, "-m", "kilnet", "--cmake-dir", "extra"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "usage" in r.stderr


def test_cmake_dir_is_lazy():
    """`import kilnet` does not load the path helpers, the exporter or the CLI."""
    r = subprocess.run([sys.executable, "-c", "import sys, kilnet; print([m for m in ('kilnet._cmake', "
                        "'kilnet.export', 'kilnet.cli') if m in sys.modules])"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


@needs_toolchain
@pytest.mark.skipif(not (Path(kilnet.__file__).parent / "lib" / "cmake" / "kilnet").exists(),
                    reason="kilnet is not installed from a wheel (no C++ package beside it)")
def test_examples_build_against_the_wheel(tmp_path):
    """CI installs the wheel: the examples build against what it ships and run."""
    r = _run([sys.executable, "-m", "kilnet", "--cmake-dir"], cwd=tmp_path)
    exes = _build_examples(tmp_path / "ex", r.stdout.strip(), "-DKILNET_EXAMPLES_SHARED=ON")
    out = _run([exes["train_mlp"], "--epochs", "20"]).stdout
    assert "test accuracy" in out


# ------------------------------------------------------------------------------- examples
@needs_toolchain
def test_train_mlp_learns(examples):
    r = subprocess.run([str(examples["train_mlp"])], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    losses = [float(v) for v in re.findall(r"^epoch +\d+ +loss ([0-9.]+)", r.stdout, re.M)]
    assert len(losses) >= 3 and losses[-1] < 0.5 * losses[0], r.stdout
    acc = float(re.search(r"test accuracy ([0-9.]+)", r.stdout).group(1))
    assert acc >= 0.9, r.stdout


def _model(kind):
    set_random_seed(7)
    if kind == "cnn":   # every layer type, 'same' and 'valid', strides, dilation, no bias, Dense on 3-D
        layers = [Conv2D(4, 3, strides=2, padding="same", activation="relu", input_shape=(9, 8, 2)),
                  Conv2D(3, (2, 3), dilation_rate=(2, 1), use_bias=False, activation="tanh"),
                  Dense(5, activation="sigmoid"), Flatten(), Dense(16), Activation("relu"),
                  Dense(6, activation="softmax")]
        x_shape, classes = (9, 8, 2), 6
    else:               # an MLP with a linear output
        layers = [Dense(12, activation="tanh", input_shape=(7,)), Dense(8, activation="relu"), Dense(3)]
        x_shape, classes = (7,), 3
    model = Sequential(layers)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, *x_shape)).astype(np.float32)
    if kind == "cnn":
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        model.fit(x, rng.integers(0, classes, len(x)), epochs=2, batch_size=16, verbose=0)
    else:
        model.compile(optimizer="adam", loss="mse")
        model.fit(x, rng.normal(size=(len(x), classes)), epochs=2, batch_size=16, verbose=0)
    return model, x


@needs_toolchain
@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_infer_matches_predict(examples, tmp_path, kind):
    model, x = _model(kind)
    x = x[:13]
    model.export_weights(tmp_path / "model.kilnet")
    np.save(tmp_path / "x.npy", x)
    # Batch 4 over 13 samples: full batches and a partial last one.
    r = _run([examples["infer"], tmp_path / "model.kilnet", tmp_path / "x.npy", tmp_path / "y.npy",
              "--batch-size", "4"])
    assert "ran 13 samples" in r.stdout
    got = np.load(tmp_path / "y.npy")
    want = model.predict(x, verbose=0)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@needs_toolchain
def test_infer_refuses_bad_files(examples, tmp_path):
    model, x = _model("mlp")
    path = tmp_path / "model.kilnet"
    model.export_weights(path)
    np.save(tmp_path / "bad.npy", np.zeros((2, 6), np.float32))
    r = subprocess.run([str(examples["infer"]), str(path), str(tmp_path / "bad.npy")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "(6,)" in r.stderr and "(7,)" in r.stderr, r.stderr
    np.save(tmp_path / "x.npy", x)
    path.write_bytes(path.read_bytes()[:-10])
    r = subprocess.run([str(examples["infer"]), str(path), str(tmp_path / "x.npy")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "truncated" in r.stderr, r.stderr


# ------------------------------------------------------------------------------- the C API
C_PROGRAM = r"""
#include <stdio.h>
#include <string.h>
#include <kilnet/c_api.h>
#include <kilnet/version.h>

static int failures = 0;
#define CHECK(cond) do { if (!(cond)) { printf("CHECK failed at line %d: %s\n", __LINE__, #cond); ++failures; } } while (0)

int main(void) {
  float a[6] = {1, 2, 3, 4, 5, 6}, b[6] = {1, 0, 0, 1, 1, 1}, c[4] = {0, 0, 0, 0};
  float x[25], w[9], y[49], dw[9];
  kilnet_conv2d_shape s;
  int64_t labels[2] = {0, 3};
  double loss = -1;
  int rc, i;
  for (i = 0; i < 25; ++i) x[i] = (float)i;
  for (i = 0; i < 9; ++i) w[i] = 1.0f;

  /* A (2x3) . B (3x2): fine */
  rc = kilnet_gemm(0, 0, 2, 2, 3, 1.0f, a, 3, b, 2, 0.0f, c, 2, NULL);
  CHECK(rc == KILNET_OK);
  CHECK(strcmp(kilnet_last_error(), "") == 0);
  CHECK(c[0] == 4 && c[1] == 5 && c[2] == 10 && c[3] == 11);

  /* a bad shape: lda smaller than K. An error code and a message, and C untouched. */
  c[0] = -1;
  rc = kilnet_gemm(0, 0, 2, 2, 3, 1.0f, a, 2, b, 2, 0.0f, c, 2, NULL);
  printf("gemm lda=2: %s: %s\n", kilnet_status_name(rc), kilnet_last_error());
  CHECK(rc == KILNET_ERR_SHAPE);
  CHECK(strstr(kilnet_last_error(), "kilnet_gemm") && strstr(kilnet_last_error(), "lda"));
  CHECK(c[0] == -1);

  /* conv2d: Keras's shape from the init helper, then an output size that cannot be */
  rc = kilnet_conv2d_shape_init(&s, 1, 5, 5, 1, 1, 3, 3, 1, 1, 1, 1, KILNET_PADDING_VALID);
  CHECK(rc == KILNET_OK && s.P == 3 && s.Q == 3 && s.pad_h == 0);
  CHECK(kilnet_conv2d_forward(&s, x, w, NULL, y) == KILNET_OK);
  CHECK(y[0] == 0 + 1 + 2 + 5 + 6 + 7 + 10 + 11 + 12);
  for (i = 0; i < 9; ++i) w[i] = -1.0f;   /* relu fused into the store: all outputs 0 */
  CHECK(kilnet_conv2d_forward_act(&s, x, w, NULL, KILNET_ACT_RELU, y) == KILNET_OK && y[0] == 0);
  CHECK(kilnet_conv2d_backward_act(&s, y, x, w, KILNET_ACT_RELU, NULL, NULL, dw, NULL) == KILNET_ERR_NULL_POINTER);
  s.P = 7;
  rc = kilnet_conv2d_forward(&s, x, w, NULL, y);
  printf("conv2d P=7: %s: %s\n", kilnet_status_name(rc), kilnet_last_error());
  CHECK(rc == KILNET_ERR_SHAPE && strstr(kilnet_last_error(), "P x Q"));

  /* NULL, a size < 1, an overlap, an out-of-range label, a bad enum */
  rc = kilnet_softmax_forward(2, 3, NULL, a);
  printf("softmax NULL x: %s: %s\n", kilnet_status_name(rc), kilnet_last_error());
  CHECK(rc == KILNET_ERR_NULL_POINTER && strstr(kilnet_last_error(), "'x' is NULL"));
  CHECK(kilnet_bias_backward(0, 3, a, c) == KILNET_ERR_INVALID_VALUE);
  CHECK(kilnet_gemm(0, 0, 2, 2, 3, 1.0f, a, 3, b, 2, 0.0f, a + 1, 2, NULL) == KILNET_ERR_OVERLAP);
  rc = kilnet_softmax_crossentropy(2, 3, a, labels, NULL, NULL, NULL, &loss);
  printf("label 3 of 3 classes: %s: %s\n", kilnet_status_name(rc), kilnet_last_error());
  CHECK(rc == KILNET_ERR_INVALID_VALUE && strstr(kilnet_last_error(), "labels[1] = 3") && loss == -1);
  CHECK(kilnet_activation_forward(KILNET_ACT_SOFTMAX, 6, a, a) == KILNET_ERR_INVALID_VALUE);
  CHECK(kilnet_set_num_threads(0) == KILNET_ERR_INVALID_VALUE);

  /* a success clears the message */
  labels[1] = 2;
  CHECK(kilnet_softmax_crossentropy(2, 3, a, labels, NULL, NULL, NULL, &loss) == KILNET_OK);
  CHECK(strcmp(kilnet_last_error(), "") == 0 && loss > 0);

  CHECK(strcmp(kilnet_version(), KILNET_VERSION_STRING) == 0);
  CHECK(kilnet_c_api_version() == KILNET_C_API_VERSION);
  printf("kilnet %s, %s kernels, %d threads: %s\n", kilnet_version(), kilnet_simd_level(),
         kilnet_get_num_threads(), failures ? "FAILED" : "ok");
  return failures ? 1 : 0;
}
"""


@needs_toolchain
def test_c_program_error_path(site, tmp_path):
    """Plain C99 against the installed header and libkilnet.so: bad shapes give a code and a
    message, never a crash."""
    src = tmp_path / "capi_errors.c"
    src.write_text(textwrap.dedent(C_PROGRAM))
    exe = tmp_path / "capi_errors"
    lib = site / "kilnet" / "lib"
    _run([CC, "-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", src, f"-I{site / 'kilnet' / 'include'}",
          f"-L{lib}", "-lkilnet", f"-Wl,-rpath,{lib}", "-o", exe])
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "KILNET_ERR_SHAPE: kilnet_gemm: lda must be >= 3" in r.stdout
    assert r.stdout.rstrip().endswith("ok")


@needs_toolchain
def test_c_only_cmake_project(cmake_dir, tmp_path):
    """A project with only C enabled finds kilnet and links kilnet::kernels_shared (the static
    target, which needs C++ and OpenMP, is not imported there)."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "main.c").write_text(textwrap.dedent(C_PROGRAM))
    (tmp_path / "src" / "CMakeLists.txt").write_text(textwrap.dedent("""\
        cmake_minimum_required(VERSION 3.21)
        project(c_consumer LANGUAGES C)
        find_package(kilnet REQUIRED COMPONENTS shared)
        if(TARGET kilnet::kernels)
          message(FATAL_ERROR "the static target needs C++: it should not be imported here")
        endif()
        add_executable(capi_errors main.c)
        set_target_properties(capi_errors PROPERTIES C_STANDARD 99 C_STANDARD_REQUIRED ON C_EXTENSIONS OFF)
        target_link_libraries(capi_errors PRIVATE kilnet::kernels_shared)
        """))
    _run([CMAKE, "-S", tmp_path / "src", "-B", tmp_path / "build", *_generator(), f"-Dkilnet_DIR={cmake_dir}",
          f"-DCMAKE_C_COMPILER={CC}"])
    _run([CMAKE, "--build", tmp_path / "build"])
    r = subprocess.run([str(tmp_path / "build" / "capi_errors")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.rstrip().endswith("ok"), r.stdout + r.stderr


def _p(a):
    return a.ctypes.data_as(ctypes.c_void_p) if a is not None else None


I64, F32 = ctypes.c_int64, ctypes.c_float


@needs_toolchain
def test_c_api_matches_the_kernels(libkilnet):
    """Success paths through ctypes give what kilnet._cpu gives."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(5, 7)).astype(np.float32), rng.normal(size=(7, 4)).astype(np.float32)
    bias = rng.normal(size=4).astype(np.float32)
    c = np.zeros((5, 4), np.float32)
    assert libkilnet.kilnet_gemm(0, 0, I64(5), I64(4), I64(7), F32(1.0), _p(a), I64(7), _p(b), I64(4), F32(0.0),
                                 _p(c), I64(4), _p(bias)) == 0
    np.testing.assert_allclose(c, a @ b + bias, rtol=1e-5, atol=1e-5)

    x = rng.normal(size=(2, 6, 5, 3)).astype(np.float32)
    w = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)

    class Shape(ctypes.Structure):
        _fields_ = [(n, ctypes.c_int64) for n in ("N", "H", "W", "C", "K", "R", "S", "P", "Q", "stride_h",
                                                  "stride_w", "pad_h", "pad_w", "dilation_h", "dilation_w")]
    s = Shape()
    assert libkilnet.kilnet_conv2d_shape_init(ctypes.byref(s), *(I64(v) for v in (2, 6, 5, 3, 4, 3, 3, 2, 1, 1, 1)),
                                              1) == 0
    layer = Conv2D(4, 3, strides=(2, 1), padding="same")
    layer._build((None, 6, 5, 3))
    assert (s.P, s.Q, s.pad_h, s.pad_w) == (*layer._pq, *layer._pad)
    y = np.empty((2, s.P, s.Q, 4), np.float32)
    assert libkilnet.kilnet_conv2d_forward(ctypes.byref(s), _p(x), _p(w), None, _p(y)) == 0
    want = np.empty_like(y)
    _cpu.conv2d_forward(x, w, None, want, (2, 1), layer._pad, (1, 1))
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    # the fused entry points (KILNET_ACT_RELU = 1) against the binding's act=
    bias = rng.normal(size=4).astype(np.float32)
    assert libkilnet.kilnet_conv2d_forward_act(ctypes.byref(s), _p(x), _p(w), _p(bias), 1, _p(y)) == 0
    _cpu.conv2d_forward(x, w, bias, want, (2, 1), layer._pad, (1, 1), "relu")
    np.testing.assert_array_equal(y, want)
    dy = rng.normal(size=y.shape).astype(np.float32)
    dx, dw, db = np.empty_like(x), np.zeros_like(w), np.zeros(4, np.float32)
    assert libkilnet.kilnet_conv2d_backward_act(ctypes.byref(s), _p(dy), _p(x), _p(w), 1, _p(y), _p(dx), _p(dw),
                                                _p(db)) == 0
    dx2, dw2, db2 = np.empty_like(x), np.zeros_like(w), np.zeros(4, np.float32)
    _cpu.conv2d_backward(dy, x, w, dx2, dw2, db2, (2, 1), layer._pad, (1, 1), "relu", y)
    for got, exp in ((dx, dx2), (dw, dw2), (db, db2)):
        np.testing.assert_array_equal(got, exp)

    logits = rng.normal(size=(6, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 6).astype(np.int64)
    probs, grad = np.empty_like(logits), np.empty_like(logits)
    loss = ctypes.c_double()
    assert libkilnet.kilnet_softmax_crossentropy(I64(6), I64(5), _p(logits), _p(labels), None, _p(probs), _p(grad),
                                                 ctypes.byref(loss)) == 0
    g2 = np.empty_like(logits)
    assert loss.value == pytest.approx(_cpu.softmax_crossentropy(logits, labels, None, None, g2), rel=1e-6)
    np.testing.assert_allclose(grad, g2, rtol=1e-6, atol=1e-7)

    p, g = rng.normal(size=50).astype(np.float32), rng.normal(size=50).astype(np.float32)
    m, v = np.zeros(50, np.float32), np.zeros(50, np.float32)
    p2, m2, v2 = p.copy(), m.copy(), v.copy()
    assert libkilnet.kilnet_adam_update(I64(50), _p(p), _p(g), _p(m), _p(v), F32(0.01), F32(0.9), F32(0.999),
                                        F32(1e-7), I64(1)) == 0
    _cpu.adam_update(p2, g, m2, v2, 0.01, 0.9, 0.999, 1e-7, 1)
    np.testing.assert_array_equal(p, p2)
    z, z2 = np.ones(1000, np.float32), np.ones(1000, np.float32)
    assert libkilnet.kilnet_normal_fill(I64(1000), ctypes.c_uint64(2 ** 64 - 3), ctypes.c_uint64(77), F32(0.5), 1,
                                        _p(z)) == 0
    _cpu.normal_fill(z2, 2 ** 64 - 3, 77, 0.5, True)
    np.testing.assert_array_equal(z, z2)
    out = (ctypes.c_uint32 * 4)()
    assert libkilnet.kilnet_philox4x32_10((ctypes.c_uint32 * 4)(0, 0, 0, 0), (ctypes.c_uint32 * 2)(0, 0), out) == 0
    assert list(out) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert libkilnet.kilnet_version().decode() == kilnet.__version__
    assert libkilnet.kilnet_simd_level().decode() in ("avx512", "avx2", "scalar")


def _bad_calls():
    """(name, call(lib, buffers), expected status, words in the message)."""
    f = lambda *shape: np.zeros(shape, np.float32)   # noqa: E731
    a, b, c, big = f(4, 3), f(3, 2), f(4, 2), f(64)
    lab = np.array([0, 5], np.int64)
    return [
        ("gemm M=0", lambda L: L.kilnet_gemm(0, 0, I64(0), I64(2), I64(3), F32(1), _p(a), I64(3), _p(b), I64(2),
                                             F32(0), _p(c), I64(2), None), 2, ["'M' must be >= 1, got 0"]),
        ("gemm ldb", lambda L: L.kilnet_gemm(0, 0, I64(4), I64(2), I64(3), F32(1), _p(a), I64(3), _p(b), I64(1),
                                             F32(0), _p(c), I64(2), None), 3, ["ldb must be >= 2"]),
        ("gemm lda transposed", lambda L: L.kilnet_gemm(1, 1, I64(3), I64(3), I64(4), F32(1), _p(a), I64(2), _p(b),
                                                        I64(2), F32(0), _p(c), I64(3), None), 3, ["lda must be >= 3",
                                                                                                   "transposed"]),
        ("gemm NULL B", lambda L: L.kilnet_gemm(0, 0, I64(4), I64(2), I64(3), F32(1), _p(a), I64(3), None, I64(2),
                                                F32(0), _p(c), I64(2), None), 1, ["'B' is NULL"]),
        ("gemm C overlaps bias", lambda L: L.kilnet_gemm(0, 0, I64(4), I64(2), I64(3), F32(1), _p(a), I64(3), _p(b),
                                                         I64(2), F32(0), _p(big), I64(2), _p(big[6:])), 4,
         ["'C' overlaps 'bias'"]),
        ("bias_backward db overlaps dy", lambda L: L.kilnet_bias_backward(I64(4), I64(2), _p(big), _p(big[7:])), 4,
         ["overlaps"]),
        ("activation code", lambda L: L.kilnet_activation_forward(9, I64(4), _p(big), _p(big)), 2,
         ["unknown activation 9"]),
        ("activation partial overlap", lambda L: L.kilnet_activation_forward(1, I64(8), _p(big), _p(big[1:])), 4,
         ["'y' overlaps 'x'"]),
        ("softmax_backward dx is y", lambda L: L.kilnet_softmax_backward(I64(2), I64(4), _p(big), _p(big[8:]),
                                                                         _p(big)), 4, ["'dx' overlaps 'y'"]),
        ("sparse label", lambda L: L.kilnet_sparse_categorical_crossentropy(I64(2), I64(5), _p(big), _p(lab), None,
                                                                            None), 2, ["labels[1] = 5"]),
        ("softmax_ce both", lambda L: L.kilnet_softmax_crossentropy(I64(2), I64(8), _p(big), _p(np.zeros(2, np.int64)),
                                                                    _p(big[16:]), None, None, None), 2,
         ["exactly one of"]),
        ("normal_fill n", lambda L: L.kilnet_normal_fill(I64(0), ctypes.c_uint64(1), ctypes.c_uint64(0), F32(1), 0,
                                                          _p(big)), 2, ["'n' must be >= 1"]),
        ("normal_fill out", lambda L: L.kilnet_normal_fill(I64(4), ctypes.c_uint64(1), ctypes.c_uint64(0), F32(1), 0,
                                                            None), 1, ["'out' is NULL"]),
        ("mse cols", lambda L: L.kilnet_mse(I64(2), I64(-1), _p(big), _p(big), None, None), 2, ["'cols' must be >= 1"]),
        ("sgd momentum without velocity", lambda L: L.kilnet_sgd_update(I64(8), _p(big), _p(big[8:]), None, F32(0.1),
                                                                        F32(0.9), 0), 1, ["'velocity' is NULL"]),
        ("adam step 0", lambda L: L.kilnet_adam_update(I64(8), _p(big), _p(big[8:]), _p(big[16:]), _p(big[24:]),
                                                       F32(0.1), F32(0.9), F32(0.999), F32(1e-7), I64(0)), 2,
         ["'step' counts from 1"]),
        ("adam m is v", lambda L: L.kilnet_adam_update(I64(8), _p(big), _p(big[8:]), _p(big[16:]), _p(big[16:]),
                                                       F32(0.1), F32(0.9), F32(0.999), F32(1e-7), I64(1)), 4,
         ["'m' overlaps 'v'"]),
        ("conv2d_shape_init valid too small", lambda L: L.kilnet_conv2d_shape_init(
            ctypes.byref((ctypes.c_int64 * 15)()), *(I64(v) for v in (1, 2, 2, 1, 1, 3, 3, 1, 1, 1, 1)), 0), 3,
         ["smaller than the kernel extent 3"]),
        ("conv2d_shape_init padding", lambda L: L.kilnet_conv2d_shape_init(
            ctypes.byref((ctypes.c_int64 * 15)()), *(I64(v) for v in (1, 5, 5, 1, 1, 3, 3, 1, 1, 1, 1)), 7), 2,
         ["KILNET_PADDING_SAME"]),
        ("conv2d_forward NULL shape", lambda L: L.kilnet_conv2d_forward(None, _p(big), _p(big), None, _p(big)), 1,
         ["'s' is NULL"]),
        ("conv2d_forward_act softmax", lambda L: L.kilnet_conv2d_forward_act(
            ctypes.byref(_conv_shape_1x3x3()), _p(f(9)), _p(f(9)), None, 4, _p(big)), 2, ["softmax is not elementwise"]),
        ("conv2d_backward_act relu without y", lambda L: L.kilnet_conv2d_backward_act(
            ctypes.byref(_conv_shape_1x3x3()), _p(f(1)), _p(f(9)), _p(f(9)), 1, None, None, _p(big), None), 1,
         ["'y' is NULL"]),
        ("conv2d_backward_act dw overlaps y", lambda L: L.kilnet_conv2d_backward_act(
            ctypes.byref(_conv_shape_1x3x3()), _p(f(1)), _p(f(9)), _p(f(9)), 1, _p(big), None, _p(big), None), 4,
         ["'dw' overlaps 'y'"]),
    ], big


_THREADS_PROGRAM = r"""
import ctypes, sys
import numpy as np
lib = ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL)   # its libgomp becomes visible below
omp = ctypes.CDLL(None)
omp.omp_set_num_threads(3)                 # the host program's own OpenMP count
assert lib.kilnet_set_num_threads(2) == 0
assert lib.kilnet_get_num_threads() == 2
assert omp.omp_get_max_threads() == 3, omp.omp_get_max_threads()
a = np.ones((64, 64), np.float32); c = np.zeros((64, 64), np.float32)
p = lambda x: x.ctypes.data_as(ctypes.c_void_p)
I64, F32 = ctypes.c_int64, ctypes.c_float
assert lib.kilnet_gemm(0, 0, I64(64), I64(64), I64(64), F32(1.0), p(a), I64(64), p(a), I64(64), F32(0.0), p(c),
                       I64(64), None) == 0
assert (c == 64).all()
assert omp.omp_get_max_threads() == 3, omp.omp_get_max_threads()   # put back after the call
assert lib.kilnet_set_num_threads(5000) == 2                         # KILNET_ERR_INVALID_VALUE
print("ok")
"""


@needs_toolchain
def test_c_api_thread_count_leaves_the_callers_alone(site):
    """kilnet_set_num_threads sets kilnet's count, not the calling thread's OpenMP count, and a
    kernel call puts the caller's count back (in a process of its own: no kilnet._cpu loaded)."""
    r = subprocess.run([sys.executable, "-c", _THREADS_PROGRAM, str(site / "kilnet" / "lib" / "libkilnet.so")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def _conv_shape_1x3x3():
    """kilnet_conv2d_shape of one 3x3 image, one channel, one 3x3 filter, output 1x1."""
    return (ctypes.c_int64 * 15)(1, 3, 3, 1, 1, 3, 3, 1, 1, 1, 1, 0, 0, 1, 1)


@needs_toolchain
def test_c_api_error_path(libkilnet):
    """Each family refuses NULLs, sizes < 1, shapes that disagree, overlaps and bad values with
    the documented code and a message naming the function and argument; outputs untouched."""
    calls, big = _bad_calls()
    names = {1: b"KILNET_ERR_NULL_POINTER", 2: b"KILNET_ERR_INVALID_VALUE", 3: b"KILNET_ERR_SHAPE",
             4: b"KILNET_ERR_OVERLAP"}
    for name, call, status, words in calls:
        big[:] = 1.5
        rc = call(libkilnet)
        msg = libkilnet.kilnet_last_error().decode()
        assert rc == status, f"{name}: status {rc}, message {msg!r}"
        assert libkilnet.kilnet_status_name(rc) == names[status]
        assert msg.startswith("kilnet_"), f"{name}: {msg!r}"
        for word in words:
            assert word in msg, f"{name}: {msg!r} lacks {word!r}"
        assert (big == 1.5).all(), f"{name}: wrote an output"
    assert libkilnet.kilnet_status_name(99) == b"unknown status"


# ------------------------------------------------------------------------------- export format
def _read_export(path):
    data = path.read_bytes()
    assert data[:8] == MAGIC
    version, n_layers, rank = struct.unpack_from("<III", data, 8)
    off = 20
    in_shape = struct.unpack_from(f"<{rank}q", data, off)
    off += 8 * rank
    layers = []
    for _ in range(n_layers):
        kind, name_len = struct.unpack_from("<II", data, off)
        off += 8
        name = data[off:off + name_len].decode()
        off += name_len
        (n_cfg,) = struct.unpack_from("<I", data, off)
        config = struct.unpack_from(f"<{n_cfg}q", data, off + 4)
        off += 4 + 8 * n_cfg
        (n_w,) = struct.unpack_from("<I", data, off)
        off += 4
        weights = []
        for _ in range(n_w):
            (r,) = struct.unpack_from("<I", data, off)
            shape = struct.unpack_from(f"<{r}q", data, off + 4)
            off += 4 + 8 * r
            count = int(np.prod(shape))
            weights.append(np.frombuffer(data, "<f4", count, off).reshape(shape))
            off += 4 * count
        layers.append((kind, name, config, weights))
    assert off == len(data)
    return version, in_shape, layers


def test_export_format(tmp_path):
    model, _ = _model("cnn")
    model.export_weights(tmp_path / "m.kilnet")
    version, in_shape, layers = _read_export(tmp_path / "m.kilnet")
    assert version == 1 and in_shape == (9, 8, 2)
    assert [k for k, *_ in layers] == [LAYER_TYPES[type(l).__name__] for l in model.layers]
    assert [n for _, n, *_ in layers] == [l.name for l in model.layers]
    conv = model.layers[0]
    assert layers[0][2] == (4, 3, 3, 2, 2, 1, 1, 1, *conv._pad, *conv._pq, ACTIVATION_CODES["relu"], 1)
    assert layers[1][2][-1] == 0 and len(layers[1][3]) == 1            # use_bias=False: the kernel only
    assert layers[2][2] == (5, ACTIVATION_CODES["sigmoid"], 1)
    assert layers[3][2] == () and layers[5][2] == (ACTIVATION_CODES["relu"],)
    for (_, _, _, weights), layer in zip(layers, model.layers):
        for got, want in zip(weights, layer.get_weights()):
            np.testing.assert_array_equal(got, want)
    assert [p.name for p in tmp_path.iterdir()] == ["m.kilnet"]       # no temporary file left


def test_export_refuses_what_cpp_cannot_run(tmp_path):
    class Scale(Layer):
        def forward(self, x, training=False):
            return 2 * x

    with pytest.raises(ValueError, match=r"Scale.*cannot be exported.*Dense, Conv2D, Flatten, Activation"):
        Sequential([Dense(3, input_shape=(4,)), Scale()]).export_weights(tmp_path / "m.kilnet")
    with pytest.raises(ValueError, match="build the model first"):
        Sequential([Dense(3)]).export_weights(tmp_path / "m.kilnet")
    assert list(tmp_path.iterdir()) == []
