"""Training loops apart from the models: trainer.py (fit/evaluate/predict for any Model),
compile_utils.py (losses, loss weights and metrics per output), policy.py (what differs per
process in data-parallel training), progress.py (the progress bar)."""
