"""A small decoder-only Transformer trained character by character on the Python standard
library's own .py files (text every machine with Python has), and sampling from it.

Used by `kilnet train --model char-transformer` and examples/char_transformer.py. The model is
plain Keras-API code: token + position Embedding, N blocks of (LayerNormalization, causal
MultiHeadAttention, residual add, LayerNormalization, a GELU MLP, residual add), a final
LayerNormalization and a Dense to the vocabulary (logits).
"""
from __future__ import annotations

import os
import sysconfig

import numpy as np

import kilnet
from kilnet import layers, ops

VOCAB = 128   # ASCII; any other byte reads as '?'


def stdlib_text(max_bytes=2_000_000, root=None) -> bytes:
    """Up to max_bytes of the standard library's .py sources, files in sorted order."""
    root = root or sysconfig.get_paths()["stdlib"]
    out, total = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "test", "tests", "idlelib"))
        for f in sorted(filenames):
            if not f.endswith(".py"):
                continue
            try:
                with open(os.path.join(dirpath, f), "rb") as fh:
                    data = fh.read()
            except OSError:
                continue
            out.append(data)
            total += len(data)
            if total >= max_bytes:
                return b"".join(out)[:max_bytes]
    if not out:
        raise FileNotFoundError(f"no .py files under {root!r} to train on")
    return b"".join(out)[:max_bytes]


def encode(text: bytes) -> np.ndarray:
    ids = np.frombuffer(text, np.uint8).astype(np.int32)
    ids[ids >= VOCAB] = ord("?")
    return ids


def decode(ids) -> str:
    return bytes(int(i) for i in ids).decode("ascii", errors="replace")


def windows(ids, context, n, rng):
    """n random (input, next-character target) windows of length context."""
    starts = rng.integers(0, len(ids) - context - 1, n)
    idx = starts[:, None] + np.arange(context)[None, :]
    return ids[idx], ids[idx + 1]


def split(ids, val_fraction=0.1):
    cut = int(len(ids) * (1 - val_fraction))
    return ids[:cut], ids[cut:]


def build_model(context=128, width=128, heads=4, blocks=4, mlp_ratio=4, learning_rate=1e-3, compile=True):
    """The functional model; compiled with Adam and sparse cross-entropy on the logits."""
    tokens = kilnet.Input((context,), dtype="int32", name="tokens")
    x = TokenAndPosition(VOCAB, context, width, name="embed")(tokens)
    for i in range(blocks):
        h = layers.LayerNormalization(epsilon=1e-5, name=f"block{i}_ln1")(x)
        h = layers.MultiHeadAttention(heads, width // heads, name=f"block{i}_attn")(h, h, use_causal_mask=True)
        x = layers.Add(name=f"block{i}_add1")([x, h])
        h = layers.LayerNormalization(epsilon=1e-5, name=f"block{i}_ln2")(x)
        h = layers.Dense(mlp_ratio * width, activation="gelu", name=f"block{i}_mlp1")(h)
        h = layers.Dense(width, name=f"block{i}_mlp2")(h)
        x = layers.Add(name=f"block{i}_add2")([x, h])
    x = layers.LayerNormalization(epsilon=1e-5, name="final_ln")(x)
    logits = layers.Dense(VOCAB, name="logits")(x)
    model = kilnet.Model(tokens, logits, name="char_transformer")
    if compile:
        model.compile(optimizer=kilnet.optimizers.Adam(learning_rate),
                      loss=kilnet.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


class TokenAndPosition(layers.Layer):
    """Token embedding + learned position embedding (the keras.io Transformer recipe)."""

    def __init__(self, vocab, context, width, **kwargs):
        super().__init__(**kwargs)
        self.vocab, self.context, self.width = vocab, context, width
        self.tok = layers.Embedding(vocab, width)
        self.pos = layers.Embedding(context, width)

    def call(self, ids):
        return self.tok(ids) + self.pos(ops.arange(ids.shape[-1]))

    def get_config(self):
        return {**super().get_config(), "vocab": self.vocab, "context": self.context, "width": self.width}


def bits_per_char(model, ids, context, n=256, seed=1, batch_size=32):
    """Mean validation loss in bits per character over n fixed windows."""
    x, y = windows(ids, context, n, np.random.default_rng(seed))
    return float(model.evaluate(x, y, batch_size=batch_size, verbose=0)) / np.log(2.0)


def sample(model, prompt: str, length=200, temperature=0.8, seed=0) -> str:
    """Continue `prompt` by sampling one character at a time from the model."""
    rng = np.random.default_rng(seed)
    context = model.inputs[0].shape[1]
    ids = list(encode(prompt.encode("ascii", errors="replace")))
    for _ in range(length):
        window = ids[-context:]
        x = np.full((1, context), ord(" "), np.int32)
        x[0, context - len(window):] = window   # left-pad with spaces
        logits = np.asarray(model.predict(x, verbose=0))[0, -1].astype(np.float64) / max(temperature, 1e-6)
        p = np.exp(logits - logits.max())
        ids.append(int(rng.choice(VOCAB, p=p / p.sum())))
    return decode(ids)


def train(steps=300, batch_size=32, context=128, width=128, heads=4, blocks=4, learning_rate=1e-3,
          max_bytes=2_000_000, eval_every=100, seed=0, verbose=1, say=print):
    """Train for `steps` optimizer steps on random windows; returns (model, curve) where curve
    lists (step, validation bits per character)."""
    kilnet.utils.set_random_seed(seed)
    ids = encode(stdlib_text(max_bytes))
    train_ids, val_ids = split(ids)
    model = build_model(context, width, heads, blocks, learning_rate=learning_rate)
    rng = np.random.default_rng(seed)
    curve = []
    done = 0
    while done < steps:
        chunk = min(eval_every, steps - done)
        x, y = windows(train_ids, context, chunk * batch_size, rng)
        model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
        done += chunk
        bpc = bits_per_char(model, val_ids, context)
        curve.append((done, bpc))
        if verbose:
            say(f"step {done}: validation {bpc:.3f} bits/char", flush=True)
    return model, curve
