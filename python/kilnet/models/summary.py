"""model.summary(): layers, output shapes, parameter counts and (functional) connections."""
from __future__ import annotations

__all__ = ["print_summary"]


def print_summary(model, print_fn):
    nodes = getattr(model, "_nodes", None)
    connected = nodes is not None
    rows = []
    if connected:
        for layer in model._input_layers:
            rows.append((f"{layer.name} (InputLayer)", str(tuple(layer._input_shape and (None, *layer._input_shape))),
                         "0", "-"))
        for node in nodes:
            layer = node.layer
            outs = [t.shape for t in _flat(node.outputs)]
            shape = str(outs[0]) if len(outs) == 1 else str(outs)
            srcs = ", ".join(f"{t.node.layer.name if t.node else t.name}[0][{t.index}]" for t in node.inputs)
            kind = "op" if not hasattr(layer, "variables") else type(layer).__name__
            rows.append((f"{layer.name} ({kind})", shape, f"{layer.count_params():,}", srcs))
    else:
        for layer in model.layers:
            shape = str(layer.output_shape) if layer.built and layer.output_shape is not None else "?"
            rows.append((f"{layer.name} ({type(layer).__name__})", shape, f"{layer.count_params():,}"))
    heads = ["Layer (type)", "Output Shape", "Param #"] + (["Connected to"] if connected else [])
    widths = [max([len(h)] + [len(r[i]) for r in rows]) + 2 for i, h in enumerate(heads)]
    line = "─" * sum(widths)
    print_fn(f'Model: "{model.name}"')
    print_fn(line)
    print_fn("".join(f"{h:<{w}}" for h, w in zip(heads, widths)))
    print_fn(line)
    for r in rows:
        print_fn("".join(f"{c:<{w}}" for c, w in zip(r, widths)))
    print_fn(line)
    total = model.count_params()
    trainable = sum(int(v.size) for v in model.trainable_variables)
    print_fn(f" Total params: {total:,}")
    print_fn(f" Trainable params: {trainable:,}")
    print_fn(f" Non-trainable params: {total - trainable:,}")


def _flat(v):
    from kilnet.engine.node import flatten
    return flatten(v)
