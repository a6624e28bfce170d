"""ONNX export and TensorRT engine building (see DESIGN.md); filled in by the export issue."""
