"""Request fields bastion does not implement and that would change the answer: refused, not dropped.

Each field is listed with the values that leave the answer as bastion gives it (None always
does), so a client that sends the default (`"tool_choice": "none"`, `"use_beam_search": false`)
is served. Fields that do not change the answer (`user`, `metadata`, `service_tier`, `store`,
`parallel_tool_calls`, `prompt_cache_key`, `safety_identifier`, vLLM's `priority`,
`request_id`, `cache_salt`) are not listed: the bodies accept and ignore them, as peers do.
"""
from __future__ import annotations

from typing import Any, Mapping

from bastion.server.http.errors import APIError

# NOTE: OpenAI's fields first, then vLLM's; `response_format`, `best_of`, `prompt_logprobs`, vLLM's
# `structured_outputs` and `guided_json/regex/choice/grammar` are declared fields of the bodies
# and checked there (`structured_fields.py`). The chat body declares `tools` and `tool_choice`
# (server/tools/), so they are refused only where no tools are read; the completions body
# declares `echo` (vLLM's chat `echo`, which repeats the last message, is not implemented).
REFUSED: dict[str, tuple[Any, ...]] = {
    "tools": ([],), "tool_choice": ("none", "auto"), "functions": ([],),
    "function_call": ("none", "auto"), "suffix": ("",), "echo": (False,), "audio": (), "prediction": (),
    "modalities": (["text"],), "web_search_options": (), "verbosity": (),
    "guided_whitespace_pattern": (), "structural_tag": (), "use_beam_search": (False,), "length_penalty": (1.0,),
    "include_stop_str_in_output": (False,), "allowed_token_ids": (), "bad_words": ([],),
    "truncate_prompt_tokens": (), "return_tokens_as_token_ids": (False,),
    "spaces_between_special_tokens": (True,), "logits_processors": (), "chat_template": (),
    "documents": (),
}


def refuse_unsupported(extra: Mapping[str, Any],
                       refused: Mapping[str, tuple[Any, ...]] = REFUSED) -> None:
    """A 400 naming the first field of `extra` (a body's unknown fields) that would change the
    answer: one `refused` lists (OpenAI's and vLLM's by default), unless its value is harmless."""
    for name, harmless in refused.items():
        value = extra.get(name)
        if value is not None and not any(value == h and isinstance(value, bool) == isinstance(h, bool)
                                         for h in harmless):
            raise APIError(400, f"'{name}' is not supported by this server", name)
