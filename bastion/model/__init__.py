"""Llama-family models from local safetensors folders; paged attention; the demo model."""
