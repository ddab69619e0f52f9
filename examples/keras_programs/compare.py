"""Runs each program here with Keras 3 and with kilnet (the same file: only the import differs)
and prints test accuracy and wall time side by side.   python compare.py [program.py ...]

Keras downloads Fashion-MNIST into ~/.keras/datasets/fashion-mnist; without a network, copy the
four .gz files there from Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)."""
import glob
import os
import subprocess
import sys
import time

here = os.path.dirname(os.path.abspath(__file__))
progs = sys.argv[1:] or sorted(p for p in glob.glob(os.path.join(here, "*.py")) if not p.endswith("compare.py"))
env = dict(os.environ, KERAS_BACKEND=os.environ.get("KERAS_BACKEND", "jax"))
for p in progs:
    row = [os.path.basename(p)]
    for lib in ("keras", "kilnet"):
        t = time.perf_counter()
        r = subprocess.run([sys.executable, p, lib], capture_output=True, text=True, env=env, timeout=3600)
        dt = time.perf_counter() - t
        line = [l for l in r.stdout.splitlines() if l.startswith("test_accuracy")]
        row.append(f"{lib}: {line[-1] if line else 'FAILED ' + r.stderr.strip().splitlines()[-1][:200]} ({dt:.0f} s)")
    print(" | ".join(row), flush=True)
