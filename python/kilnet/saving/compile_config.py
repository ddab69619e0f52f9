"""What compile() was given, as files hold it, both ways.

Keras 3 writes `compile_config` (.keras) or `training_config` (.h5, the optimizer under
"optimizer_config"): {"optimizer", "loss", "loss_weights", "metrics", "weighted_metrics",
"run_eagerly", "steps_per_execution", "jit_compile"}. tf.keras 2 writes every shape compile()
accepts, resolved per output: losses as names or serialized objects, alone, as a list or as a
dict by output name; metrics as names or objects ({"class_name": "MeanMetricWrapper",
"config": {"name": "o1_accuracy", "fn": "sparse_categorical_accuracy"}}), one list per output,
named with the output's prefix. All of these restore; only kilnet's optimizers, losses and
metrics are accepted (by name, never by import).
"""
from __future__ import annotations

import warnings

from kilnet.saving.errors import ModelFileError

__all__ = ["compile_config", "restore_compile"]


def _losses():
    from kilnet import losses
    return losses


def _metrics():
    from kilnet import metrics
    return metrics


# ------------------------------------------------------------------------ write
def compile_config(model, optimizer_key="optimizer"):
    """The Keras 3 compile_config of a compiled model (None when it is not compiled)."""
    if model.compiled is None or model.optimizer is None:
        return None
    from kilnet import optimizers
    c = model.compiled
    return {optimizer_key: optimizers.serialize(model.optimizer), "loss": _ser_loss(c.loss_spec),
            "loss_weights": c.weight_spec, "metrics": _ser_metrics(c.metric_spec),
            "weighted_metrics": _ser_metrics(c.weighted_spec), "run_eagerly": False, "steps_per_execution": 1,
            "jit_compile": False}


def _ser_loss(spec):
    if spec is None or isinstance(spec, str):
        return spec
    if isinstance(spec, dict):
        return {k: _ser_loss(v) for k, v in spec.items()}
    if isinstance(spec, (list, tuple)):
        return [_ser_loss(v) for v in spec]
    losses = _losses()
    if isinstance(spec, losses.Loss):
        return losses.serialize(spec)
    raise ValueError(f"save: the compiled loss {spec!r} cannot be written to a file (pass a name or a "
                     "kilnet.losses.Loss to compile)")


def _ser_metrics(spec):
    if spec is None or isinstance(spec, str):
        return spec
    if isinstance(spec, dict):
        return {k: _ser_metrics(v) for k, v in spec.items()}
    if isinstance(spec, (list, tuple)):
        return [_ser_metrics(v) for v in spec]
    if isinstance(spec, _metrics().Metric):
        return {"module": "keras.metrics", "class_name": type(spec).__name__,
                "config": {"name": spec.name, "dtype": "float32"}, "registered_name": None}
    raise ValueError(f"save: the compiled metric {spec!r} cannot be written to a file")


# ------------------------------------------------------------------------ read
def restore_compile(model, cfg, where):
    """compile() the model as cfg says. An optimizer, loss or metric kilnet does not have gives
    a warning and leaves the model uncompiled (as Keras does when compile_from_config fails);
    a malformed config raises ModelFileError."""
    if not isinstance(cfg, dict):
        raise ModelFileError(f"{where}: the training configuration is not a JSON object")
    opt = cfg.get("optimizer", cfg.get("optimizer_config"))
    names = _output_keys(model)
    try:
        loss = _de_loss(cfg.get("loss"), where)
        metrics = _de_metrics(cfg.get("metrics"), names, where)
        weighted = _de_metrics(cfg.get("weighted_metrics"), names, where)
        loss_weights = _de_weights(cfg.get("loss_weights"), where)
    except _Unsupported as e:
        warnings.warn(f"{where}: the model loads uncompiled: {e}", stacklevel=4)
        return False
    if loss is None:
        return False
    try:
        model.compile(optimizer=opt if opt is not None else "rmsprop", loss=loss, metrics=metrics,
                      loss_weights=loss_weights, weighted_metrics=weighted)
    except (TypeError, ValueError) as e:
        warnings.warn(f"{where}: the model loads uncompiled: cannot restore the training configuration ({e})",
                      stacklevel=4)
        model.optimizer = model.compiled = None
        return False
    return True


class _Unsupported(Exception):
    pass


def _output_keys(model):
    try:
        return list(model.output_keys() or [])
    except Exception:   # a subclassed model knows its outputs only after a call
        return []


def _de_loss(spec, where):
    if spec is None or isinstance(spec, str):
        return spec
    if isinstance(spec, dict) and "class_name" in spec:   # one serialized loss
        cls_name = spec.get("class_name")
        cfg = spec.get("config") if isinstance(spec.get("config"), dict) else {}
        losses = _losses()
        if cls_name in ("LossFunctionWrapper", "function") and isinstance(cfg.get("fn"), str):
            return cfg["fn"]
        cfg = {k: v for k, v in cfg.items() if k in ("name", "from_logits")}
        try:
            return losses.get({"class_name": cls_name, "config": cfg})
        except (TypeError, ValueError) as e:
            raise _Unsupported(f"loss {cls_name!r}: {e}") from None
    if isinstance(spec, dict):
        return {str(k): _de_loss(v, where) for k, v in spec.items()}
    if isinstance(spec, list):
        return [_de_loss(v, where) for v in spec]
    raise ModelFileError(f"{where}: malformed loss in the training configuration: {str(spec)[:100]!r}")


def _de_metric(m, prefix, where):
    """One metric: a name, or a kilnet Metric from a serialized Keras metric."""
    if isinstance(m, str):
        return _strip(m, prefix)
    if not isinstance(m, dict) or not isinstance(m.get("class_name"), str):
        raise ModelFileError(f"{where}: malformed metric {str(m)[:100]!r}")
    cfg = m.get("config") if isinstance(m.get("config"), dict) else {}
    name = _strip(cfg.get("name"), prefix) if isinstance(cfg.get("name"), str) else None
    metrics = _metrics()
    if m["class_name"] == "MeanMetricWrapper":   # tf.keras 2's form of a metric given by name
        for cand in (name, cfg.get("fn")):
            if isinstance(cand, str):
                try:
                    metrics.get(cand)
                    return cand
                except (TypeError, ValueError):
                    pass
        raise _Unsupported(f"metric {cfg.get('fn') or name!r} is not one kilnet has")
    cls = getattr(metrics, m["class_name"], None)
    if not (isinstance(cls, type) and issubclass(cls, metrics.Metric)) or m["class_name"].startswith("_"):
        raise _Unsupported(f"metric class {m['class_name']!r} is not one kilnet has")
    return cls(name=name)


def _strip(name, prefix):
    return name[len(prefix):] if prefix and isinstance(name, str) and name.startswith(prefix) else name


def _de_metrics(spec, names, where):
    if spec is None:
        return None
    if isinstance(spec, (str,)) or (isinstance(spec, dict) and "class_name" in spec):
        return [_de_metric(spec, "", where)]
    if isinstance(spec, dict):   # by output name
        return {str(k): _de_list(v, f"{k}_", where) for k, v in spec.items()}
    if not isinstance(spec, list):
        raise ModelFileError(f"{where}: malformed metrics: {str(spec)[:100]!r}")
    if spec and all(isinstance(x, list) or x is None for x in spec):   # one list per output
        if len(names) <= 1 and len(spec) == 1:
            return _de_list(spec[0], "", where)
        prefixes = [f"{n}_" for n in names] if len(names) == len(spec) else [""] * len(spec)
        return [_de_list(x, p, where) for x, p in zip(spec, prefixes)]
    return _de_list(spec, "", where)


def _de_list(v, prefix, where):
    if v is None:
        return []
    if not isinstance(v, list):
        v = [v]
    return [_de_metric(m, prefix, where) for m in v]


def _de_weights(spec, where):
    def num(x):
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            return float(x)
        raise ModelFileError(f"{where}: loss_weights must be numbers, got {str(x)[:60]!r}")
    if spec is None:
        return None
    if isinstance(spec, dict):
        return {str(k): num(v) for k, v in spec.items()}
    if isinstance(spec, list):
        return [num(v) for v in spec]
    return num(spec)
