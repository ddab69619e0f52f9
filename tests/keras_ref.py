"""Keras 3 (jax backend) as the reference for layer tests, run in one subprocess per call so the
test process never imports keras: each case is (class name, constructor kwargs, input array,
weights, call kwargs); the subprocess builds the Keras layer, sets the same weights, runs it and
returns the output and the layer's get_config()."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

HAVE_KERAS = subprocess.run([sys.executable, "-c", "import keras"], capture_output=True,
                            env={**os.environ, "KERAS_BACKEND": "jax"}).returncode == 0
needs_keras = pytest.mark.skipif(not HAVE_KERAS, reason="keras 3 with the jax backend is not installed")

_SCRIPT = r"""
import json, os, sys
os.environ["KERAS_BACKEND"] = "jax"
import numpy as np
import keras
specs = json.load(open(sys.argv[1]))
data = np.load(sys.argv[2])
out, configs = {}, {}
for i, spec in enumerate(specs):
    layer = getattr(keras.layers, spec["class_name"])(**spec["kwargs"])
    x = data[f"x{i}"]
    call_kw = {k: data[f"k{i}_{k}"] for k in spec["call_kwargs"]}
    layer(x, **call_kw)
    if spec["n_weights"]:
        layer.set_weights([data[f"w{i}_{j}"] for j in range(spec["n_weights"])])
    out[f"y{i}"] = np.asarray(layer(x, **call_kw))
    configs[str(i)] = {"config": layer.get_config(), "weights": [[v.name, list(v.shape)] for v in layer.weights]}
np.savez(sys.argv[3], **out)
json.dump(configs, open(sys.argv[4], "w"), default=str)
"""


def run_keras_layers(tmp_dir, cases):
    """cases: list of dicts with class_name, kwargs, x, weights (list of arrays), call_kwargs
    (dict of arrays). Returns (outputs, configs): one output array and one
    {"config", "weights": [[name, shape]]} per case."""
    specs, arrays = [], {}
    for i, c in enumerate(cases):
        specs.append({"class_name": c["class_name"], "kwargs": c["kwargs"],
                      "call_kwargs": sorted(c.get("call_kwargs", {})), "n_weights": len(c["weights"])})
        arrays[f"x{i}"] = c["x"]
        for j, w in enumerate(c["weights"]):
            arrays[f"w{i}_{j}"] = w
        for k, v in c.get("call_kwargs", {}).items():
            arrays[f"k{i}_{k}"] = v
    paths = [os.path.join(tmp_dir, n) for n in ("k.py", "specs.json", "in.npz", "out.npz", "cfg.json")]
    with open(paths[0], "w") as f:
        f.write(_SCRIPT)
    with open(paths[1], "w") as f:
        json.dump(specs, f)
    np.savez(paths[2], **arrays)
    r = subprocess.run([sys.executable, *paths[:1], paths[1], paths[2], paths[3], paths[4]], capture_output=True,
                       text=True, timeout=600, env={**os.environ, "KERAS_BACKEND": "jax"})
    assert r.returncode == 0, r.stderr[-3000:]
    outs = np.load(paths[3])
    with open(paths[4]) as f:
        cfgs = json.load(f)
    return [outs[f"y{i}"] for i in range(len(cases))], [cfgs[str(i)] for i in range(len(cases))]
