"""Data sets in the keras.datasets form: `fashion_mnist.load_data()`, `mnist.load_data()`."""
from kilnet.datasets import fashion_mnist, mnist

__all__ = ["fashion_mnist", "mnist"]
