"""A subclassed Model with Dropout and a custom Layer written with ops (Keras 3 or kilnet):
    python subclassed.py [keras|kilnet]"""
import os
import sys

if sys.argv[1:] == ["keras"]:
    import keras
else:
    import kilnet as keras
layers, ops = keras.layers, keras.ops

keras.utils.set_random_seed(int(os.environ.get("SEED", "0")))
(x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
x_train = x_train.reshape(-1, 784).astype("float32") / 255.0
x_test = x_test.reshape(-1, 784).astype("float32") / 255.0


class ScaledTanh(layers.Layer):
    """y = tanh(x * scale + shift), per feature: no backward written."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")
        self.shift = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="shift")

    def call(self, x):
        return ops.tanh(x * self.scale + self.shift)


class Classifier(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = layers.Dense(128)
        self.act = ScaledTanh()
        self.drop = layers.Dropout(0.2)
        self.out = layers.Dense(10, activation="softmax")

    def call(self, x, training=None):
        return self.out(self.drop(self.act(self.hidden(x)), training=training))


model = Classifier()
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x_train, y_train, batch_size=64, epochs=3, verbose=0)
print("test_accuracy", model.evaluate(x_test, y_test, verbose=0)[1])
