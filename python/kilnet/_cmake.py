"""Where a kilnet wheel keeps its C++ library: `python -m kilnet --cmake-dir` and friends.

A wheel installs the headers, libkilnet.so / libkilnet.a and the CMake package inside the
kilnet package (CMakeLists.txt, SKBUILD):
    kilnet/include/kilnet/*.h    kilnet/lib/libkilnet.*    kilnet/lib/cmake/kilnet/kilnetConfig.cmake
so a C++ project finds it with
    cmake -S . -B build -Dkilnet_DIR="$(python -m kilnet --cmake-dir)"
(or -DCMAKE_PREFIX_PATH="$(python -m kilnet --prefix)"). An in-place developer build has no such
files; `cmake --install` from a source checkout installs them instead (docs/cpp.md).
"""
from __future__ import annotations

import os
import sys

__all__ = ["prefix", "cmake_dir", "include_dir", "lib_dir", "main"]

_OPTIONS = {
    "--cmake-dir": "the directory of kilnetConfig.cmake (for -Dkilnet_DIR=)",
    "--prefix": "the install prefix of the C++ package (for CMAKE_PREFIX_PATH)",
    "--include-dir": "the directory that holds kilnet/*.h (for -I)",
    "--lib-dir": "the directory that holds libkilnet (for -L and an rpath)",
}


def prefix() -> str:
    """The kilnet package directory, which is the C++ package's install prefix in a wheel."""
    return os.path.dirname(os.path.abspath(__file__))


def _existing(path: str, what: str) -> str:
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{what} not found at {path}: this kilnet was not installed from a wheel (an in-place "
            f"build has no C++ package); install the C++ library with CMake instead: cmake -S <kilnet "
            f"source> -B build -DKILNET_PYTHON=OFF && cmake --build build && cmake --install build "
            f"--prefix <dir> (see docs/cpp.md)")
    return path


def cmake_dir() -> str:
    """The directory of kilnetConfig.cmake; FileNotFoundError when this install has none."""
    d = os.path.join(prefix(), "lib", "cmake", "kilnet")
    _existing(os.path.join(d, "kilnetConfig.cmake"), "the kilnet CMake package (kilnetConfig.cmake)")
    return d


def include_dir() -> str:
    d = os.path.join(prefix(), "include")
    _existing(os.path.join(d, "kilnet", "c_api.h"), "the kilnet C/C++ headers")
    return d


def lib_dir() -> str:
    d = os.path.join(prefix(), "lib")
    _existing(d, "the kilnet libraries")
    return d


def main(argv) -> int:
    """`python -m kilnet --cmake-dir | --prefix | --include-dir | --lib-dir`: print one path."""
    if len(argv) != 1 or argv[0] not in _OPTIONS:
        print("usage: python -m kilnet {" + " | ".join(_OPTIONS) + "}", file=sys.stderr)
        for opt, text in _OPTIONS.items():
            print(f"  {opt:<14}{text}", file=sys.stderr)
        return 2
    try:
        path = {"--cmake-dir": cmake_dir, "--include-dir": include_dir, "--lib-dir": lib_dir,
                "--prefix": lambda: (cmake_dir(), prefix())[1]}[argv[0]]()
    except FileNotFoundError as e:
        print(f"kilnet: error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0
