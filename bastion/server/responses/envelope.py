"""The Response object (`object: "response"`): its id, status, output and usage, and the
request's settings echoed as OpenAI echoes them (defaults filled in: `temperature` and `top_p`
as sampled, `tool_choice` "auto", `text.format` text, `truncation` "disabled", ...)."""
from __future__ import annotations

import time
import uuid

from bastion.server.responses.request import ResponsesRequest


def status_of(finish_reason: str | None) -> str:
    """A response's status from its sequence's finish: out of tokens is `incomplete`."""
    return "incomplete" if finish_reason == "length" else "completed"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    """The Responses API's `usage`."""
    return {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": cached_tokens},
            "output_tokens": completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + completion_tokens}


class ResponseEnvelope:
    """The Response objects of one request: made once with its id and creation time, then
    shaped at each stage (in progress, then completed, incomplete or failed)."""

    def __init__(self, body: ResponsesRequest, model: str, parallel_tool_calls: bool) -> None:
        self.body, self.model, self.parallel = body, model, parallel_tool_calls
        self.id = f"resp_{uuid.uuid4().hex}"
        self.created_at = int(time.time())
        self.temperature, self.top_p = body.temperature, body.top_p
        self.stored = False

    def sampled_with(self, temperature: float, top_p: float) -> None:
        """The sampling the engine ran (echoed in place of the defaults)."""
        self.temperature, self.top_p = temperature, top_p

    def response(self, status: str, output: list[dict], usage: dict | None = None,
                 error: dict | None = None) -> dict:
        body = self.body
        fmt = body.text.format if body.text is not None and body.text.format is not None else None
        choice = body.tool_choice
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "background": False, "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
            "max_tool_calls": None, "model": self.model, "output": output,
            "parallel_tool_calls": self.parallel, "previous_response_id": body.previous_response_id,
            "reasoning": {"effort": body.reasoning.effort if body.reasoning else None,
                          "summary": body.reasoning.summary if body.reasoning else None},
            "service_tier": body.service_tier or "default", "store": self.stored,
            "temperature": 1.0 if self.temperature is None else self.temperature,
            "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"},
                     "verbosity": "medium"},
            "tool_choice": "auto" if choice is None else choice if isinstance(choice, str) else
                           choice.model_dump(),
            "tools": [tool.model_dump(exclude_none=True) for tool in body.tools or []],
            "top_logprobs": 0, "top_p": 1.0 if self.top_p is None else self.top_p,
            "truncation": "disabled", "usage": usage, "user": body.user,
            "metadata": body.metadata or {},
        }
