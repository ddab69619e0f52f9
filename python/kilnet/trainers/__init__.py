"""Training loops apart from the models: trainer.py (fit/evaluate/predict for any Model),
compile_utils.py (losses, loss weights and metrics per output), policy.py (what differs per
process in data-parallel training), progress.py (the progress bar), data_adapters.py (batches from
generators, PyDataset, DataLoaders, read in a background thread) and stream_loop.py (fit/evaluate/
predict over them)."""
