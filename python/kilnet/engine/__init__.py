"""The engine: Tensor and Variable (tensor.py), the tape and its backward walk (tape.py),
symbolic tensors and graph nodes for the functional API (node.py)."""
