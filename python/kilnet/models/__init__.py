"""Models: Model (functional and subclassed), Sequential, load_model."""
from kilnet.models.functional import Functional
from kilnet.models.model import Model
from kilnet.models.sequential import Sequential

__all__ = ["Model", "Sequential", "Functional", "load_model"]


def load_model(filepath, compile=True, custom_objects=None, safe_mode=True):
    """Load a model saved by `model.save` (kilnet or Keras .h5 layout)."""
    from kilnet.io import load_model as _load
    return _load(filepath, compile=compile)
