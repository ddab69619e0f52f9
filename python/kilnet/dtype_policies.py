"""Dtype policies (Keras 3's keras.dtype_policies): which dtype a layer computes in and which
its variables have.

  "float32"         compute float32,  variables float32 (the default)
  "mixed_bfloat16"  compute bfloat16, variables float32
  "mixed_float16"   compute float16,  variables float32 (pair with a LossScaleOptimizer)
  "bfloat16"        compute bfloat16, variables bfloat16 in Keras
  "float16"         compute float16,  variables float16 in Keras

kilnet keeps every variable in float32 (the model's one flat parameter buffer): under the
"bfloat16"/"float16" policies `variable_dtype` reports Keras's name, the layers compute as under
the mixed policies, and the optimizer updates the weights in float32. The global
policy (set_dtype_policy) is what a layer built without `dtype=` takes, as in Keras. This
module imports nothing else from kilnet.
"""
from __future__ import annotations

__all__ = ["DTypePolicy", "FloatDTypePolicy", "get", "serialize", "deserialize", "set_dtype_policy",
           "dtype_policy", "POLICY_NAMES"]

# name -> (compute dtype, variable dtype), Keras 3's _parse_name for the float dtypes kilnet runs
_PARSED = {"float32": ("float32", "float32"), "mixed_bfloat16": ("bfloat16", "float32"),
           "mixed_float16": ("float16", "float32"), "bfloat16": ("bfloat16", "bfloat16"),
           "float16": ("float16", "float16")}
POLICY_NAMES = tuple(_PARSED)


class DTypePolicy:
    """`DTypePolicy("mixed_bfloat16")`: `.name`, `.compute_dtype`, `.variable_dtype`, as Keras 3's
    (name=None: the global policy's name)."""

    def __init__(self, name=None):
        if name is None:
            name = dtype_policy().name
        if not isinstance(name, str):
            raise TypeError(f"'name' must be a string, such as 'mixed_float16'. Received: name={name!r} "
                            f"(of type {type(name).__name__})")
        parsed = _PARSED.get(name)
        if parsed is None:
            raise ValueError(f"Cannot convert {name!r} to a DTypePolicy kilnet runs; valid policies: "
                             + ", ".join(repr(n) for n in POLICY_NAMES)
                             + " (kilnet computes in float32, bfloat16 or float16)")
        self._name = name
        self._compute_dtype, self._variable_dtype = parsed

    @property
    def name(self) -> str:
        return self._name

    @property
    def compute_dtype(self) -> str:
        """The dtype the layer's inputs are cast to and its outputs have."""
        return self._compute_dtype

    @property
    def variable_dtype(self) -> str:
        """The dtype Keras gives the layer's weights (kilnet stores them in float32 always)."""
        return self._variable_dtype

    @property
    def quantization_mode(self):
        return None

    def get_config(self) -> dict:
        return {"name": self._name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f'<DTypePolicy "{self._name}">'

    def __eq__(self, other):
        return isinstance(other, DTypePolicy) and self._name == other._name

    def __hash__(self):
        return hash(self._name)


class FloatDTypePolicy(DTypePolicy):
    """Keras's alias of DTypePolicy."""


_global: list = [None]   # the global policy (Keras keeps it process-wide too)


def set_dtype_policy(policy) -> None:
    """Set the global policy: a name ('mixed_bfloat16', ...) or a DTypePolicy."""
    if isinstance(policy, str):
        policy = DTypePolicy(policy)
    elif not isinstance(policy, DTypePolicy):
        raise ValueError("Invalid `policy` argument. Expected the string name of a policy (such as "
                         f"'mixed_float16') or a `DTypePolicy` instance. Received: policy={policy!r} "
                         f"(of type {type(policy).__name__})")
    _global[0] = policy


def dtype_policy() -> DTypePolicy:
    """The global policy (float32 until set_dtype_policy is called)."""
    if _global[0] is None:
        _global[0] = DTypePolicy("float32")
    return _global[0]


def get(identifier) -> DTypePolicy:
    """A policy from None (the global one), a name, a DTypePolicy, a serialized dict
    ({"class_name": "DTypePolicy", "config": {"name": ...}}) or a numpy/Python dtype."""
    if identifier is None:
        return dtype_policy()
    if isinstance(identifier, DTypePolicy):
        return identifier
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, str):
        return DTypePolicy(identifier)
    import numpy as np
    try:
        name = np.dtype(identifier).name
    except TypeError:
        raise ValueError(f"Cannot interpret `dtype` argument. Expected a string or an instance of "
                         f"DTypePolicy. Received: dtype={identifier!r}") from None
    return DTypePolicy(name)


def serialize(policy) -> dict:
    """Keras 3's form: {"module": "keras", "class_name": "DTypePolicy", "config": {"name": ...},
    "registered_name": None}."""
    return {"module": "keras", "class_name": "DTypePolicy", "config": policy.get_config(),
            "registered_name": None}


def deserialize(config, custom_objects=None) -> DTypePolicy:
    if not isinstance(config, dict):
        raise ValueError(f"a serialized dtype policy must be a dict, got {config!r}")
    cls = config.get("class_name", "DTypePolicy")
    if cls not in ("DTypePolicy", "FloatDTypePolicy", "Policy"):
        raise ValueError(f"unsupported dtype policy class {cls!r}: kilnet runs DTypePolicy (float32, "
                         "mixed_bfloat16, mixed_float16, bfloat16, float16); quantized policies are not supported")
    inner = config.get("config")
    if not isinstance(inner, dict) or set(inner) - {"name"}:
        raise ValueError(f"malformed dtype policy config {inner!r}")
    return DTypePolicy(inner.get("name"))
