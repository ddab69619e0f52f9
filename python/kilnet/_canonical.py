"""The canonical CNN, shared by the `kilnet` command (kilnet.cli re-exports it) and `kilnet bench`
(its training-step case), so that neither imports the other."""
from __future__ import annotations

__all__ = ["canonical_model"]


def canonical_model():
    """The canonical CNN: Conv2D(32, 3x3, relu) → Flatten → Dense(10, softmax), Adam, sparse CE."""
    from kilnet.layers import Conv2D, Dense, Flatten
    from kilnet.models import Sequential
    model = Sequential([
        Conv2D(32, (3, 3), activation="relu", input_shape=(28, 28, 1)),
        Flatten(),
        Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model
