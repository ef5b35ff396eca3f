"""Deployment of a trained backbone: ONNX / TensorRT export with parity checks, the Embedder runtime
(torch | onnxruntime | TensorRT), and batch embedding of image folders into an embeddings dir."""
