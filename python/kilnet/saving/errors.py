"""ModelFileError, as kilnet.saving names it (defined in the leaf kilnet.errors)."""
from kilnet.errors import ModelFileError

__all__ = ["ModelFileError"]
