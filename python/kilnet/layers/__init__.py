"""Layers with Keras names, arguments, defaults and weight layouts."""
from kilnet import serialization
from kilnet.layers.activation import Activation
from kilnet.layers.attention import MultiHeadAttention
from kilnet.layers.base import Layer
from kilnet.layers.conv import Conv2D
from kilnet.layers.conv1d import Conv1D, Convolution1D
from kilnet.layers.conv_transpose import Conv2DTranspose, Convolution2DTranspose
from kilnet.layers.depthwise import DepthwiseConv2D, SeparableConv2D, SeparableConvolution2D
from kilnet.layers.pooling1d import AveragePooling1D, AvgPool1D, MaxPool1D, MaxPooling1D
from kilnet.layers.global_pooling import (GlobalAveragePooling1D, GlobalAvgPool1D, GlobalMaxPool1D, GlobalMaxPool2D,
                                          GlobalMaxPooling1D, GlobalMaxPooling2D)
from kilnet.layers.resampling import Cropping2D, UpSampling1D, UpSampling2D
from kilnet.layers.rescaling import Rescaling
from kilnet.layers.activation_layers import ELU, LeakyReLU, PReLU, ReLU, Softmax
from kilnet.engine.node import Input
from kilnet.layers.core import Dense, Flatten, InputLayer
from kilnet.layers.embedding import Embedding
from kilnet.layers.layer_normalization import LayerNormalization
from kilnet.layers.merging import (Add, Average, Concatenate, Dot, Maximum, Minimum, Multiply, Subtract, add,
                                   average, concatenate, dot, maximum, minimum, multiply, subtract)
from kilnet.layers.normalization import BatchNormalization
from kilnet.layers.pooling import (AveragePooling2D, AvgPool2D, GlobalAveragePooling2D, GlobalAvgPool2D,
                                   MaxPool2D, MaxPooling2D)
from kilnet.layers.recurrent import GRU, LSTM, SimpleRNN, TimeDistributed
from kilnet.layers.bidirectional import Bidirectional
from kilnet.layers.masking import Masking
from kilnet.layers.regularization import Dropout
from kilnet.layers.reshape import Reshape, ZeroPadding2D

__all__ = ["Layer", "Dense", "Conv2D", "Flatten", "Activation", "InputLayer", "Input", "get", "REGISTRY",
           "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "MaxPool2D", "AvgPool2D",
           "GlobalAvgPool2D", "Dropout", "BatchNormalization", "Reshape", "ZeroPadding2D",
           "SimpleRNN", "LSTM", "GRU", "TimeDistributed", "Add", "Subtract", "Multiply", "Average",
           "Maximum", "Minimum", "Concatenate", "Dot", "add", "subtract", "multiply", "average", "maximum",
           "minimum", "concatenate", "dot", "MultiHeadAttention", "Embedding", "LayerNormalization",
           "Bidirectional", "Masking", "Conv1D", "Convolution1D", "Conv2DTranspose", "Convolution2DTranspose",
           "DepthwiseConv2D", "SeparableConv2D", "SeparableConvolution2D", "MaxPooling1D", "AveragePooling1D",
           "MaxPool1D", "AvgPool1D", "GlobalAveragePooling1D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
           "GlobalAvgPool1D", "GlobalMaxPool1D", "GlobalMaxPool2D", "UpSampling1D", "UpSampling2D", "Cropping2D",
           "Rescaling", "ReLU", "LeakyReLU", "ELU", "PReLU", "Softmax"]

# Every layer type a model file may name. Loading refuses any other class name.
REGISTRY = {cls.__name__: cls for cls in (
    Dense, Conv2D, Flatten, Activation, InputLayer, MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D,
    Dropout, BatchNormalization, Reshape, ZeroPadding2D, SimpleRNN, LSTM, GRU, TimeDistributed, Add, Subtract,
    Multiply, Average, Maximum, Minimum, Concatenate, Dot, MultiHeadAttention, Embedding, LayerNormalization,
    Bidirectional, Masking, Conv1D, Conv2DTranspose, DepthwiseConv2D, SeparableConv2D, MaxPooling1D,
    AveragePooling1D, GlobalAveragePooling1D, GlobalMaxPooling1D, GlobalMaxPooling2D, UpSampling1D, UpSampling2D,
    Cropping2D, Rescaling, ReLU, LeakyReLU, ELU, PReLU, Softmax)}
serialization.register(*REGISTRY.values())


def get(class_name: str):
    if class_name not in REGISTRY:
        raise ValueError(f"unsupported layer type {class_name!r}; kilnet supports: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[class_name]
