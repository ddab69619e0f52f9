"""Ready-made programs built on the public API (the CLI and the examples run them)."""
