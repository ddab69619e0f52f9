"""Models: Model (functional and subclassed), Sequential, load_model."""
from kilnet.models.functional import Functional
from kilnet.models.model import Model
from kilnet.models.sequential import Sequential

__all__ = ["Model", "Sequential", "Functional", "load_model"]


def load_model(filepath, compile=True, custom_objects=None, safe_mode=True, allow_nonfinite=False):
    """Load a model saved by `model.save` (kilnet or Keras .h5 layout). allow_nonfinite=True
    loads weights that hold NaN or Inf (refused by default)."""
    if custom_objects:
        raise ValueError("load_model: custom_objects are not supported yet (only built-in layer types load)")
    from kilnet.io import load_model as _load
    return _load(filepath, compile=compile, allow_nonfinite=allow_nonfinite)
