"""Each route's constraint fields reach the engine and hold: chat, completions and /generate,
streamed and not, through the openai SDK and httpx, on the demo model."""
from __future__ import annotations

import json
import re
from typing import Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

MODEL = "demo"
VERDICT = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]},
                                            "score": {"type": "integer", "minimum": 0, "maximum": 9}},
           "required": ["answer", "score"], "additionalProperties": False}


class Verdict(BaseModel):
    answer: Literal["yes", "no"]
    score: int = Field(ge=0, le=9)


def test_the_sdk_parses_a_pydantic_response_format(shared_server):
    client = openai.OpenAI(base_url=f"{shared_server.url}/v1", api_key="unused", max_retries=0)
    answer = client.beta.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "Is a list mutable?"}],
        response_format=Verdict, max_tokens=48, temperature=0)
    choice = answer.choices[0]
    assert choice.finish_reason == "stop" and isinstance(choice.message.parsed, Verdict)


# (fields on chat/completions, fields in sampling_params, does the text match)
CASES = [
    ({"guided_regex": "(yes|no), [0-9]"}, {"regex": "(yes|no), [0-9]"},
     lambda t: re.fullmatch("(yes|no), [0-9]", t)),
    ({"structured_outputs": {"choice": ["red", "green", "blue"]}}, {"regex": "(red|green|blue)"},
     lambda t: t in ("red", "green", "blue")),
    ({"guided_grammar": 'root ::= ("x" | "y") ("x" | "y") "!"'}, {"ebnf": 'root ::= ("x" | "y") ("x" | "y") "!"'},
     lambda t: re.fullmatch("[xy][xy]!", t)),
    ({"structured_outputs": {"grammar": 'start: "ok" | "fine"'}}, {"ebnf": 'start: "ok" | "fine"'},
     lambda t: t in ("ok", "fine")),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "v", "schema": VERDICT}}},
     {"json_schema": json.dumps(VERDICT)}, lambda t: Verdict.model_validate_json(t)),
    ({"guided_json": VERDICT}, {"json_schema": json.dumps(VERDICT)}, lambda t: Verdict.model_validate_json(t)),
]


@pytest.mark.parametrize("fields, sglang, matches", CASES)
def test_every_route_holds_its_constraint_streamed_and_not(shared_server, fields, sglang, matches):
    with httpx.Client(base_url=shared_server.url, timeout=120) as http:
        for stream in (False, True):
            texts = []
            chat = {"model": MODEL, "messages": [{"role": "user", "content": "Answer."}], "max_tokens": 48,
                    "stream": stream, **fields}
            completion = {"model": MODEL, "prompt": "The answer:", "max_tokens": 48, "stream": stream,
                          "n": 2, "temperature": 1.0, **fields}
            generate = {"text": "The answer:", "stream": stream,
                        "sampling_params": {"max_new_tokens": 48, **sglang}}
            texts += _texts(http, "/v1/chat/completions", chat, stream, "chat")
            texts += _texts(http, "/v1/completions", completion, stream, "text")
            texts += _texts(http, "/generate", generate, stream, None)
            for text, finish in texts:
                assert finish == "stop" and matches(text), (text, finish, fields, stream)


def _texts(http: httpx.Client, route: str, body: dict, stream: bool, kind: str | None) -> list[tuple]:
    """(text, finish reason) of every choice of one answer."""
    if not stream:
        answer = http.post(route, json=body)
        assert answer.status_code == 200, answer.text
        data = answer.json()
        if kind is None:
            return [(d["text"], d["meta_info"]["finish_reason"]["type"])
                    for d in (data if isinstance(data, list) else [data])]
        return [(c["message"]["content"] if kind == "chat" else c["text"], c["finish_reason"])
                for c in data["choices"]]
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    with http.stream("POST", route, json=body) as answer:
        assert answer.status_code == 200
        for line in answer.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if kind is None:  # SGLang: the text so far
                texts[event["index"]] = event["text"]
                reason = event["meta_info"]["finish_reason"]
                if reason:
                    finish[event["index"]] = reason["type"]
                continue
            for c in event.get("choices", []):
                piece = c["delta"].get("content") if kind == "chat" else c["text"]
                texts[c["index"]] = texts.get(c["index"], "") + (piece or "")
                if c.get("finish_reason"):
                    finish[c["index"]] = c["finish_reason"]
    return [(texts[i], finish.get(i)) for i in sorted(texts)]
