"""Load and run artifacts (XLA or onnxruntime), cross-check backends."""
