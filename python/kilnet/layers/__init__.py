"""Layers with Keras names, arguments, defaults and weight layouts."""
from kilnet.layers.activation import Activation
from kilnet.layers.base import Layer
from kilnet.layers.conv import Conv2D
from kilnet.layers.core import Dense, Flatten, Input, InputLayer
from kilnet.layers.recurrent import GRU, LSTM, SimpleRNN, TimeDistributed

__all__ = ["Layer", "Dense", "Conv2D", "Flatten", "Activation", "InputLayer", "Input", "get", "REGISTRY"]

# Every layer type a model file may name. Loading refuses any other class name.
REGISTRY = {cls.__name__: cls for cls in (Dense, Conv2D, Flatten, Activation, InputLayer)}
# Recurrent layers (issue 5)
__all__ += ["SimpleRNN", "LSTM", "GRU", "TimeDistributed"]
REGISTRY.update({cls.__name__: cls for cls in (SimpleRNN, LSTM, GRU, TimeDistributed)})


def get(class_name: str):
    if class_name not in REGISTRY:
        raise ValueError(f"unsupported layer type {class_name!r}; kilnet supports: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[class_name]
