"""The log-probabilities of given text in the HTTP API: the fields that ask for them
(`fields.py`: `echo`, `logprobs`, `prompt_logprobs`, `max_tokens: 0`) and the prompt in the
answers (`echo.py`). The engine computes them (`bastion/engine/prompt_logprobs/`)."""
