"""Runtime: fast inference of a loaded model (devices, cached GPT-2, CPU kernels, decoding)."""
