"""Legacy HDF5 (.h5) model files, as `kilnet.io` (the code is kilnet/saving/legacy_h5.py;
`kilnet.saving.load_model` / `model.save` pick the format by suffix and content)."""
from kilnet.saving.legacy_h5 import ModelFileError, load_model, model_from_config, read_legacy_weights, save_model

__all__ = ["save_model", "load_model", "model_from_config", "read_legacy_weights", "ModelFileError"]
