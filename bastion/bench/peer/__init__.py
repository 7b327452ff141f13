"""Benchmarks of bastion beside a peer server that is already running (llama.cpp's llama-server)."""
