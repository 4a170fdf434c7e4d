"""The inference runtime: CPU kernels, the KV cache."""
