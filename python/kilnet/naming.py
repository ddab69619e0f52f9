"""Automatic names (conv2d, conv2d_1, ...) for layers, models and inputs, as Keras gives them."""
from __future__ import annotations

import itertools
import threading
from collections import defaultdict

__all__ = ["unique_name", "reset_name_counters"]

_name_counters: dict = defaultdict(itertools.count)
_name_lock = threading.Lock()


def unique_name(base: str) -> str:
    with _name_lock:
        i = next(_name_counters[base])
    return base if i == 0 else f"{base}_{i}"


def reset_name_counters() -> None:
    """Restart automatic layer names (conv2d, conv2d_1, ...), like keras.backend.clear_session."""
    with _name_lock:
        _name_counters.clear()
