"""model.predict as the black box of shap.KernelExplainer (pip install shap).

    python examples/shap_kernel_explainer.py

A small MLP on a synthetic tabular task where only features 0 and 1 matter; SHAP should give
those two features the largest attributions.
"""
import numpy as np
import shap

from kilnet.layers import Dense
from kilnet.models import Sequential
from kilnet.utils import set_random_seed

set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.normal(size=(2000, 6)).astype(np.float32)
y = ((x[:, 0] + 2 * x[:, 1]) > 0).astype(np.int64)
model = Sequential([Dense(16, activation="relu", input_shape=(6,)), Dense(2, activation="softmax")])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x, y, epochs=5, verbose=0)
print("accuracy:", model.evaluate(x, y, verbose=0)[1])

explainer = shap.KernelExplainer(lambda a: model.predict(a, verbose=0)[:, 1], x[:50])
values = explainer.shap_values(x[:20], nsamples=200, silent=True)
importance = np.abs(values).mean(axis=0)
print("mean |SHAP| per feature:", np.round(importance, 3))
print("most important features:", np.argsort(importance)[::-1][:2])
