"""Disaggregated prefill and decode: KV blocks move from a prefill rank to a decode rank."""
