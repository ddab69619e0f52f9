"""Fashion-MNIST (Zalando): 60,000 training and 10,000 test 28x28 grey images in 10 classes."""
from kilnet.datasets.idx import load_pair

CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot"]


def load_data():
    """Returns ((x_train, y_train), (x_test, y_test)) as keras.datasets.fashion_mnist does:
    uint8 arrays of shape (60000, 28, 28), (60000,), (10000, 28, 28), (10000,)."""
    return load_pair("fashion-mnist",
                     "Install them with `apt-get install dataset-fashion-mnist`, or put the four "
                     "IDX .gz files in $KILNET_DATA or ~/.kilnet/datasets/fashion-mnist.")
