"""The one error a damaged, hostile or unsupported model file raises."""
from __future__ import annotations

__all__ = ["ModelFileError"]


class ModelFileError(ValueError):
    """A model file that is missing parts, corrupt, or asks for something kilnet refuses."""
