"""Saving and loading models as Keras does: `.keras` archives, legacy `.h5` files and
`.weights.h5` weights (docs/saving.md). Importing this package imports no model code: the
entry points load what they need when called (kilnet.models imports them the same way)."""
from kilnet.saving.errors import ModelFileError
from kilnet.saving.object_registration import (CustomObjectScope, custom_object_scope, get_custom_objects,
                                               get_registered_name, get_registered_object,
                                               register_keras_serializable)
from kilnet.saving.saving_api import load_model, load_weights, save_model, save_weights

__all__ = ["save_model", "load_model", "save_weights", "load_weights", "register_keras_serializable",
           "get_registered_name", "get_registered_object", "get_custom_objects", "custom_object_scope",
           "CustomObjectScope", "ModelFileError"]
