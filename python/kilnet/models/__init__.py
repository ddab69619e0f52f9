"""Models: Model (functional and subclassed), Sequential, load_model."""
from kilnet import persistence
from kilnet.models.functional import Functional
from kilnet.models.model import Model
from kilnet.models.sequential import Sequential

__all__ = ["Model", "Sequential", "Functional", "load_model"]


def load_model(filepath, custom_objects=None, compile=True, safe_mode=True, allow_nonfinite=False):
    """Load a model saved by `model.save`: a .keras archive or a legacy .h5 file (kilnet's,
    Keras 3's or tf.keras 2's). custom_objects maps class names in the file to your classes
    (classes registered with kilnet.saving.register_keras_serializable resolve by themselves);
    allow_nonfinite=True loads weights that hold NaN or Inf (refused by default)."""
    return persistence.saving_api().load_model(filepath, custom_objects=custom_objects, compile=compile,
                                               safe_mode=safe_mode, allow_nonfinite=allow_nonfinite)
