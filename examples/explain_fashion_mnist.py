"""Explain and audit the canonical Fashion-MNIST CNN.

    python examples/explain_fashion_mnist.py [--model model.h5] [--epochs 2] [--out explain_out]

Prints per-class precision/recall/F1 and accuracy, names the weakest class, checks the
integrated-gradients completeness on a few test images, and writes input/attribution images
for them (matplotlib needed for the images).
"""
import argparse
import os

import numpy as np

from kilnet import explain, metrics
from kilnet.cli import canonical_model, draw_attribution
from kilnet.datasets import fashion_mnist
from kilnet.datasets.fashion_mnist import CLASS_NAMES
from kilnet.models import load_model
from kilnet.utils import set_random_seed

ap = argparse.ArgumentParser()
ap.add_argument("--model", help="a saved canonical model (.h5); trained here if not given")
ap.add_argument("--epochs", type=int, default=2)
ap.add_argument("--items", type=int, nargs="+", default=[0, 7, 12, 42])
ap.add_argument("--out", default="explain_out")
args = ap.parse_args()

(x_train, y_train), (x_test, y_test) = fashion_mnist.load_data()
x_train = (x_train / 255.0).reshape(-1, 28, 28, 1)
x_test = (x_test / 255.0).reshape(-1, 28, 28, 1)
if args.model:
    model = load_model(args.model)
else:
    set_random_seed(0)
    model = canonical_model()
    model.fit(x_train, y_train, epochs=args.epochs, verbose=2)

pred = model.predict(x_test, batch_size=256)
report = metrics.classification_report(y_test, pred, target_names=CLASS_NAMES, output_dict=True)
print(metrics.classification_report(y_test, pred, target_names=CLASS_NAMES))
weakest = min(CLASS_NAMES, key=lambda c: report[c]["recall"])
print(f"\nweakest class: {weakest} (accuracy {report[weakest]['recall']:.4f})")
cm = metrics.confusion_matrix(y_test, pred)
confused = CLASS_NAMES[int(np.argsort(cm[CLASS_NAMES.index(weakest)])[-2])]
print(f"it is most often mistaken for: {confused}")

x = x_test[args.items]
attr, delta = explain.integrated_gradients(model, x, steps=50, return_delta=True)
f = pred[args.items].max(axis=1)
print("\nintegrated gradients, 50 steps: sum(attr) - (f(x) - f(0)) per item:",
      " ".join(f"{d:+.2e}" for d in delta), f"(outputs {np.round(f, 3)})")
os.makedirs(args.out, exist_ok=True)
try:
    for i, item in enumerate(args.items):
        p = int(pred[item].argmax())
        path = os.path.join(args.out, f"item{item}.png")
        draw_attribution(x[i], attr[i], f"#{item}: true {CLASS_NAMES[y_test[item]]}, "
                         f"predicted {CLASS_NAMES[p]} ({pred[item, p]:.2f})", path)
        print("wrote", path)
except SystemExit as e:   # matplotlib missing
    print(e)
