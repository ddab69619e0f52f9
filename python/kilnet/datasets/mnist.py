"""MNIST handwritten digits: 60,000 training and 10,000 test 28x28 grey images."""
from kilnet.datasets.idx import load_pair


def load_data():
    """Returns ((x_train, y_train), (x_test, y_test)) as keras.datasets.mnist does."""
    return load_pair("mnist",
                     "Put the four MNIST IDX .gz files (train-images-idx3-ubyte.gz, ...) in "
                     "$KILNET_DATA/mnist or ~/.kilnet/datasets/mnist.")
