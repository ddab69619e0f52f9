"""Weight initializers with Keras names, defaults and serialized form.

Fan computation follows Keras: for a kernel of shape (..., fan_in, fan_out) the receptive field
(the product of the leading axes) multiplies both fans.
"""
from __future__ import annotations

import math

import numpy as np

from kilnet.utils import get_rng, lookup

__all__ = ["Initializer", "Zeros", "Ones", "Constant", "RandomNormal", "RandomUniform",
           "TruncatedNormal", "GlorotUniform", "GlorotNormal", "HeNormal", "HeUniform",
           "LecunNormal", "LecunUniform", "Orthogonal", "get", "serialize"]


def compute_fans(shape):
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


class Initializer:
    """Base class: `init(shape)` returns a float32 array."""

    def __call__(self, shape, dtype="float32"):
        return np.asarray(self.sample(tuple(int(s) for s in shape)), dtype=np.float32)

    def _gen(self):
        seed = getattr(self, "seed", None)
        return np.random.default_rng(seed) if seed is not None else get_rng()

    def get_config(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class Zeros(Initializer):
    def sample(self, shape):
        return np.zeros(shape)


class Ones(Initializer):
    def sample(self, shape):
        return np.ones(shape)


class Constant(Initializer):
    def __init__(self, value=0.0):
        self.value = float(value)

    def sample(self, shape):
        return np.full(shape, self.value)

    def get_config(self):
        return {"value": self.value}


class RandomNormal(Initializer):
    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        self.mean, self.stddev, self.seed = float(mean), float(stddev), seed

    def sample(self, shape):
        return self._gen().normal(self.mean, self.stddev, shape)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, "seed": self.seed}


class RandomUniform(Initializer):
    def __init__(self, minval=-0.05, maxval=0.05, seed=None):
        self.minval, self.maxval, self.seed = float(minval), float(maxval), seed

    def sample(self, shape):
        return self._gen().uniform(self.minval, self.maxval, shape)

    def get_config(self):
        return {"minval": self.minval, "maxval": self.maxval, "seed": self.seed}


def _truncated_normal(gen, stddev, shape):
    # Redraw values beyond two standard deviations, as Keras's truncated normal does.
    out = gen.normal(0.0, stddev, shape)
    bad = np.abs(out) > 2 * stddev
    while bad.any():
        out[bad] = gen.normal(0.0, stddev, int(bad.sum()))
        bad = np.abs(out) > 2 * stddev
    return out


class TruncatedNormal(Initializer):
    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        self.mean, self.stddev, self.seed = float(mean), float(stddev), seed

    def sample(self, shape):
        return self.mean + _truncated_normal(self._gen(), self.stddev, shape)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, "seed": self.seed}


class VarianceScaling(Initializer):
    """Keras's VarianceScaling: scale / fan, drawn from a (truncated) normal or a uniform."""

    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal", seed=None):
        if mode not in ("fan_in", "fan_out", "fan_avg"):
            raise ValueError(f"VarianceScaling: mode must be fan_in, fan_out or fan_avg, got {mode!r}")
        if distribution not in ("truncated_normal", "untruncated_normal", "uniform", "normal"):
            raise ValueError(f"VarianceScaling: unknown distribution {distribution!r}")
        self.scale, self.mode, self.distribution, self.seed = float(scale), mode, distribution, seed

    def sample(self, shape):
        fan_in, fan_out = compute_fans(shape)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[self.mode]
        var = self.scale / max(1.0, fan)
        gen = self._gen()
        if self.distribution in ("truncated_normal", "normal"):
            # 0.8796... is the stddev of a unit normal truncated at two standard deviations.
            return _truncated_normal(gen, math.sqrt(var) / 0.87962566103423978, shape)
        if self.distribution == "untruncated_normal":
            return gen.normal(0.0, math.sqrt(var), shape)
        limit = math.sqrt(3.0 * var)
        return gen.uniform(-limit, limit, shape)

    def get_config(self):
        return {"scale": self.scale, "mode": self.mode, "distribution": self.distribution, "seed": self.seed}


class GlorotUniform(VarianceScaling):
    def __init__(self, seed=None):
        super().__init__(1.0, "fan_avg", "uniform", seed)

    def get_config(self):
        return {"seed": self.seed}


class GlorotNormal(VarianceScaling):
    def __init__(self, seed=None):
        super().__init__(1.0, "fan_avg", "truncated_normal", seed)

    def get_config(self):
        return {"seed": self.seed}


class HeNormal(VarianceScaling):
    def __init__(self, seed=None):
        super().__init__(2.0, "fan_in", "truncated_normal", seed)

    def get_config(self):
        return {"seed": self.seed}


class HeUniform(VarianceScaling):
    def __init__(self, seed=None):
        super().__init__(2.0, "fan_in", "uniform", seed)

    def get_config(self):
        return {"seed": self.seed}


class LecunNormal(VarianceScaling):
    def __init__(self, seed=None):
        super().__init__(1.0, "fan_in", "truncated_normal", seed)

    def get_config(self):
        return {"seed": self.seed}


class LecunUniform(VarianceScaling):
    def __init__(self, seed=None):
        super().__init__(1.0, "fan_in", "uniform", seed)

    def get_config(self):
        return {"seed": self.seed}


class Orthogonal(Initializer):
    """A (semi-)orthogonal matrix from the QR decomposition of a normal draw (Keras's way)."""

    def __init__(self, gain=1.0, seed=None):
        self.gain, self.seed = float(gain), seed

    def sample(self, shape):
        rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
        cols = shape[-1]
        a = self._gen().normal(0.0, 1.0, (max(rows, cols), min(rows, cols)))
        q, r = np.linalg.qr(a)
        q *= np.sign(np.diag(r))
        if rows < cols:
            q = q.T
        return self.gain * q[:rows, :cols].reshape(shape)

    def get_config(self):
        return {"gain": self.gain, "seed": self.seed}


_CLASSES = {c.__name__: c for c in (Zeros, Ones, Constant, RandomNormal, RandomUniform,
                                    TruncatedNormal, VarianceScaling, GlorotUniform, GlorotNormal,
                                    HeNormal, HeUniform, LecunNormal, LecunUniform, Orthogonal)}
_ALIASES = {"zeros": Zeros, "ones": Ones, "constant": Constant, "random_normal": RandomNormal,
            "random_uniform": RandomUniform, "truncated_normal": TruncatedNormal,
            "variance_scaling": VarianceScaling, "glorot_uniform": GlorotUniform,
            "glorot_normal": GlorotNormal, "he_normal": HeNormal, "he_uniform": HeUniform,
            "lecun_normal": LecunNormal, "lecun_uniform": LecunUniform, "orthogonal": Orthogonal,
            # Keras 3's short names (Embedding's default embeddings_initializer is "uniform")
            "uniform": RandomUniform, "normal": RandomNormal, "zero": Zeros, "one": Ones}


def get(identifier) -> Initializer:
    """An initializer from an instance, a Keras string name, or a serialized dict."""
    if isinstance(identifier, Initializer):
        return identifier
    if isinstance(identifier, str):
        return lookup("initializer", _ALIASES, identifier)()
    if isinstance(identifier, dict):
        name = identifier.get("class_name")
        if name not in _CLASSES:
            raise ValueError(f"unknown initializer {name!r}; valid: {', '.join(sorted(_CLASSES))}")
        config = identifier.get("config") or {}
        if not isinstance(config, dict):
            raise ValueError(f"initializer {name}: config must be a dict")
        # Newer Keras versions add keys whose None default changes nothing (input_axes, ...).
        config = {k: v for k, v in config.items() if v is not None or k == "seed"}
        try:
            return _CLASSES[name].from_config(config)
        except TypeError as e:
            raise ValueError(f"initializer {name}: bad config {config!r} ({e})") from None
    raise TypeError(f"cannot interpret {identifier!r} as an initializer")


def serialize(init: Initializer) -> dict:
    return {"module": "keras.initializers", "class_name": type(init).__name__,
            "config": init.get_config(), "registered_name": None}
