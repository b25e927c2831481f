"""Python-backend model files copied into Triton model repositories as ``<version>/model.py``.

They run inside Triton's python backend stub with the serving venv (numpy<2, onnxruntime, tokenizers,
Pillow), never inside transferkit itself: they import only those packages and ``triton_python_backend_utils``.
"""
