"""Peak resident memory of one training epoch: `kilnet train` against the same program in PyTorch.

    python benchmarks/bench_memory.py [--epochs 1] [--threads 1] [--limit N]

Each program runs in its own fresh process (so neither sees the other's pages) and reports its
peak resident set size (getrusage ru_maxrss) after training one epoch of the canonical model on
Fashion-MNIST and evaluating it. kilnet's is the `kilnet train` command itself; PyTorch's is the
lean loop of benchmarks/bench_epoch.py (the data read with the same loader, converted to a
float32 NCHW tensor, Conv2d(1,32,3) + ReLU + Flatten + Linear(21632,10), Adam, batch 32).
Also reported: the RSS right after the imports, which separates the library's own footprint
from what training adds. Issue 3's target: kilnet ≤ 60% of PyTorch's peak.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from machine_info import machine   # benchmarks/ is on sys.path

KILNET = r"""
import json, resource, sys
def rss():   # current resident set (MiB), from /proc
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
import kilnet.cli
after_import = rss()
rc = kilnet.cli.main(['train', '--epochs', str(EPOCHS), '--threads', str(THREADS), '--out', '',
                      '--verbose', '0'] + (['--limit', str(LIMIT)] if LIMIT else []))
print(json.dumps({'rc': rc, 'import_mib': after_import,
                  'peak_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

TORCH = r"""
import json, resource
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024
import numpy as np, torch
from kilnet.datasets import fashion_mnist   # the same files, read the same way
after_import = rss()
torch.set_num_threads(THREADS)
torch.manual_seed(0)
(xt, yt), (xe, ye) = fashion_mnist.load_data()
if LIMIT:
    xt, yt = xt[:LIMIT], yt[:LIMIT]
X = torch.from_numpy((xt.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28))
Y = torch.from_numpy(yt.astype(np.int64))
model = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                            torch.nn.Linear(32 * 26 * 26, 10))
opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
lossf = torch.nn.CrossEntropyLoss()
for _ in range(EPOCHS):
    perm = torch.randperm(len(X))
    for i in range(0, len(X), 32):
        idx = perm[i:i + 32]
        opt.zero_grad(set_to_none=True)
        loss = lossf(model(X[idx]), Y[idx])
        loss.backward()
        opt.step()
with torch.no_grad():   # in batches of 256, as kilnet train evaluates
    XE = torch.from_numpy((xe.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28))
    pred = np.concatenate([model(XE[i:i + 256]).argmax(1).numpy() for i in range(0, len(XE), 256)])
    acc = float((pred == ye).mean())
print(json.dumps({'rc': 0, 'import_mib': after_import, 'acc': acc,
                  'peak_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(code, epochs, threads, limit):
    src = code.replace("EPOCHS", str(epochs)).replace("THREADS", str(threads)).replace("LIMIT", str(limit))
    out = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int, default=0)
    a = ap.parse_args(argv)
    print(f"machine: {machine()}")
    k = run(KILNET, a.epochs, a.threads, a.limit)
    print(f"kilnet train : peak {k['peak_mib']:.0f} MiB (after imports {k['import_mib']:.0f} MiB)")
    try:
        t = run(TORCH, a.epochs, a.threads, a.limit)
    except (subprocess.CalledProcessError, ImportError) as e:
        print(f"PyTorch      : not run ({e})")
        return
    print(f"PyTorch      : peak {t['peak_mib']:.0f} MiB (after imports {t['import_mib']:.0f} MiB)")
    print(f"kilnet / PyTorch peak: {k['peak_mib'] / t['peak_mib']:.0%} (target <= 60%)")


if __name__ == "__main__":
    main()
