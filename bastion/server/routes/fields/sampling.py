"""A request body's sampling fields as the engine's `SamplingParams`: one builder for every
body (OpenAI's, SGLang's, the Responses API's), `logit_bias` keys as token ids, stop strings.
Bounds `SamplingParams` checks itself are left to it (its 400 names the client's field)."""
from __future__ import annotations

import re
from typing import Annotated, Mapping

from pydantic import BaseModel, Field

from bastion.sampling_params import MAX_BIAS, MAX_LOGIT_BIAS, SamplingParams
from bastion.server.http.errors import APIError
from bastion.server.routes.fields.structured import Constraint

# The SamplingParams a request body carries in fields of the same name unless it renames them.
SAMPLING_FIELDS = ("n", "temperature", "top_p", "top_k", "min_p", "seed", "presence_penalty",
                   "frequency_penalty", "repetition_penalty", "min_tokens", "stop_token_ids",
                   "ignore_eos", "skip_special_tokens", "logit_bias")
TOKEN_ID = re.compile(r"[0-9]{1,12}")
# NOTE: checked by token_biases and SamplingParams (their 400s name the field and the key); the
# schema only says so, for clients and the API description.
LogitBias = Annotated[dict[str, float], Field(json_schema_extra={
    "propertyNames": {"pattern": f"^{TOKEN_ID.pattern}$"}, "maxProperties": MAX_LOGIT_BIAS,
    "additionalProperties": {"type": "number", "minimum": -MAX_BIAS, "maximum": MAX_BIAS}})]


def build_sampling_params(fields: BaseModel, max_tokens: int, logprobs: int | None = None,
                          renamed: Mapping[str, str] | None = None, path: str = "",
                          constraint: Constraint | None = None,
                          scoring: tuple[int, str] | None = None) -> SamplingParams:
    """The engine's parameters from a body's fields (a None field: SamplingParams' default).

    `renamed` maps a SamplingParams name to the field that carries it, `path` is where those
    fields sit in the body; a ValueError from SamplingParams' own checks becomes a 400 whose
    `param` names the client's field. `constraint` (the body's output constraint, if any)
    becomes `structured_outputs`; `scoring` (server/scoring/), `prompt_logprobs`."""
    names = {name: (renamed or {}).get(name, name) for name in SAMPLING_FIELDS}
    values = {name: getattr(fields, field) for name, field in names.items()}
    values = {name: value for name, value in values.items() if value is not None}
    if "logit_bias" in values:
        values["logit_bias"] = token_biases(values["logit_bias"], path + names["logit_bias"])
    values.update(max_tokens=max_tokens, logprobs=logprobs, prompt_logprobs=scoring and scoring[0],
                  structured_outputs=constraint.spec if constraint is not None else None)
    try:
        return SamplingParams(**values)
    except ValueError as exc:
        first = str(exc).split(" ", 1)[0]
        param = path + names[first] if first in names else first if first in values else None
        raise APIError(400, str(exc), param) from None
    except TypeError as exc:
        raise APIError(400, f"invalid sampling parameters: {exc}") from None


def token_biases(bias: Mapping[str, float], field: str) -> dict[int, float]:
    """A JSON `logit_bias` object (keys are token ids written as strings) with integer keys;
    a 400 naming `field` for a key that is not one. Bounds are SamplingParams' to check."""
    bad = next((key for key in bias if not TOKEN_ID.fullmatch(key)), None)
    if bad is not None:
        raise APIError(400, f"logit_bias keys must be token ids (strings of integers), got {bad!r}", field)
    return {int(key): value for key, value in bias.items()}


def stop_strings(stop: str | list[str] | None, field: str) -> list[str]:
    """The stop strings of a `stop` field (one string or a list); a 400 for an empty one."""
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if any(s == "" for s in stops):
        raise APIError(400, "stop strings must not be empty", field)
    return stops
