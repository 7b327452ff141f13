"""Log-probabilities of a prompt's own tokens (vLLM's `prompt_logprobs`), computed in prefill.

A request that asks (`SamplingParams.prompt_logprobs = k`; its first sequence only: the
siblings share the prompt) gets, for every prompt token after the first, the token's
log-probability given the tokens before it, its rank, and the k most likely tokens there: the
float32 log-softmax of the logits of the position before. Its prefill chunks add those
positions' rows to the step's logits rows, after the rows that sample
(`StepInputs.prompt_rows`); every other request keeps computing logits for the row it samples
from only. The rows go through the LM head `LOGIT_SLICE_ROWS` at a time and each slice is
reduced to the chosen token's value, rank and top k at once, so a long chunk never holds more
than one slice of full-vocabulary logits.

Prefix cache: positions served from the cache have no logits, so a request that still needs
its prompt logprobs skips the cache lookup (as vLLM does) and computes its whole prompt; its
blocks are still published for the requests after it. Preemption recomputes positions already
scored; they are not scored twice. The entries go out once, on the request's first delta.
"""
from bastion.engine.prompt_logprobs.collector import PromptLogprobs, taken
from bastion.engine.prompt_logprobs.rows import (LOGIT_SLICE_ROWS, PromptRows, logit_slice_rows,
                                                 logit_slices, logits_and_scores)

__all__ = ["LOGIT_SLICE_ROWS", "PromptLogprobs", "PromptRows", "logit_slice_rows", "logit_slices",
           "logits_and_scores", "taken"]
