"""A functional MLP on Fashion-MNIST, as keras.io writes it. Runs on Keras 3 or on kilnet:
    python functional_mlp.py [keras|kilnet]"""
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

inputs = keras.Input(shape=(784,))
x = layers.Dense(128, activation="relu")(inputs)
x = layers.Dense(64, activation="relu")(x)
outputs = layers.Dense(10, activation="softmax")(x)
model = keras.Model(inputs=inputs, outputs=outputs, name="mlp")
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x_train, y_train, batch_size=64, epochs=3, validation_split=0.1, verbose=0)
print("test_accuracy", model.evaluate(x_test, y_test, verbose=0)[1])
