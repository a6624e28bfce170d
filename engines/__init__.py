"""The inference runtime: image -> preprocess -> route -> batch -> engine -> result.

`runtime.py` is the entry point (`Runtime`); `model_set.py` reads what a directory serves, `routing.py` picks
each image's size and model, `dispatch.py` batches, `backends/` runs. Imports nothing from training or from the
engine builder; the hot path imports no torch.
"""
