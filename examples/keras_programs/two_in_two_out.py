"""Two inputs (image, a noisy hint) and two outputs (class, 'is footwear'), per-output losses
and loss_weights (Keras 3 or kilnet): python two_in_two_out.py [keras|kilnet]"""
import os
import sys

import numpy as np

if sys.argv[1:] == ["keras"]:
    import keras
else:
    import kilnet as keras
layers = keras.layers

keras.utils.set_random_seed(int(os.environ.get("SEED", "0")))
(x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
x_train = x_train.reshape(-1, 784).astype("float32") / 255.0
x_test = x_test.reshape(-1, 784).astype("float32") / 255.0
rng = np.random.default_rng(0)
hint_train = (np.eye(10)[y_train] + rng.normal(0, 2.0, (len(y_train), 10))).astype("float32")
hint_test = (np.eye(10)[y_test] + rng.normal(0, 2.0, (len(y_test), 10))).astype("float32")
foot = lambda y: np.isin(y, [5, 7, 9]).astype("float32")[:, None]   # sandal, sneaker, ankle boot

image = keras.Input(shape=(784,), name="image")
hint = keras.Input(shape=(10,), name="hint")
h = layers.concatenate([layers.Dense(64, activation="relu")(image), layers.Dense(16, activation="relu")(hint)])
cls = layers.Dense(10, activation="softmax", name="cls")(h)
shoe = layers.Dense(1, activation="sigmoid", name="shoe")(h)
model = keras.Model([image, hint], [cls, shoe])
model.compile(optimizer="adam", loss={"cls": "sparse_categorical_crossentropy", "shoe": "binary_crossentropy"},
              loss_weights={"cls": 1.0, "shoe": 0.3}, metrics={"cls": ["accuracy"], "shoe": ["accuracy"]})
model.fit({"image": x_train, "hint": hint_train}, {"cls": y_train, "shoe": foot(y_train)},
          batch_size=64, epochs=2, verbose=0)
res = model.evaluate({"image": x_test, "hint": hint_test}, {"cls": y_test, "shoe": foot(y_test)},
                     verbose=0, return_dict=True)
print("test_accuracy", res["cls_accuracy"], "shoe_accuracy", res["shoe_accuracy"])
