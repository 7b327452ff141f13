"""Structured outputs: what a request's text must match, as llguidance grammars.

A low-level package (like `model/`): the engine compiles and enforces grammars with it, the API
server checks them before a request is admitted. It imports nothing of bastion's higher layers.
"""
