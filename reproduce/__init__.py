"""The paper pipeline in PyTorch: data, Caffe-style training, evaluation, the report and detection.

Built on `sppnet.core` (the pyramid, the networks, preprocessing); imports nothing from export, the runtime or
the CLI.
"""
