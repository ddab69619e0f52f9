"""A toy residual network with layers.add on Fashion-MNIST (Keras 3 or kilnet):
    python resnet_add.py [keras|kilnet]"""
import os
import sys

if sys.argv[1:] == ["keras"]:
    import keras
else:
    import kilnet as keras
layers = keras.layers

keras.utils.set_random_seed(int(os.environ.get("SEED", "0")))
(x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
x_train = x_train.reshape(-1, 28, 28, 1).astype("float32") / 255.0
x_test = x_test.reshape(-1, 28, 28, 1).astype("float32") / 255.0

inputs = keras.Input(shape=(28, 28, 1))
x = layers.Conv2D(16, 3, activation="relu", padding="same")(inputs)
x = layers.MaxPooling2D(2)(x)
block = layers.Conv2D(16, 3, activation="relu", padding="same")(x)
block = layers.Conv2D(16, 3, padding="same")(block)
x = layers.add([x, block])
x = layers.Activation("relu")(x)
x = layers.GlobalAveragePooling2D()(x)
outputs = layers.Dense(10, activation="softmax")(x)
model = keras.Model(inputs, outputs, name="toy_resnet")
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x_train[:20000], y_train[:20000], batch_size=64, epochs=2, verbose=0)
print("test_accuracy", model.evaluate(x_test, y_test, verbose=0)[1])
