"""A character-level Transformer language model on the Python standard library's own sources,
written with the Keras API on kilnet (kilnet.apps.char_transformer holds the model code):

    python examples/char_transformer.py [--steps 600] [--blocks 4] [--width 128]

It prints the validation loss in bits per character every 100 steps, then samples text.
"""
import argparse

from kilnet.apps import char_transformer as ct


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    model, curve = ct.train(steps=a.steps, batch_size=a.batch_size, context=a.context, width=a.width,
                            heads=a.heads, blocks=a.blocks, seed=a.seed)
    print(f"final validation loss: {curve[-1][1]:.3f} bits per character")
    print(ct.sample(model, "def ", length=300, temperature=0.7))


if __name__ == "__main__":
    main()
