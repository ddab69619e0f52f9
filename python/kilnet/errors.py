"""The one error a damaged, hostile or unsupported model file raises. A leaf module: the
layers (a load's weight budget) and the saving code both raise it without importing each other."""
from __future__ import annotations

__all__ = ["ModelFileError"]


class ModelFileError(ValueError):
    """A model file that is missing parts, corrupt, or asks for something kilnet refuses."""
