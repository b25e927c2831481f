"""ONNX export with a parity gate, and quantization with an accuracy gate."""
