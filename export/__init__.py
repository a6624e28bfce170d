"""ONNX export, engine building and the typed manifests the runtime reads.

Built on `sppnet.core` and the paper pipeline; imports nothing from the runtime or the CLI.
"""
