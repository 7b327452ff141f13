"""`GET /openapi.json` on real servers, and schemathesis fuzzing every operation it describes.

The document is fetched over HTTP, as a client generator or an API fuzzer would; every operation
then gets a bounded number of generated requests, valid ones and invalid ones, sent to the live
server. Checks: no 5xx (nor a server error inside a stream), every status and content type is
one the document lists, every error body is the OpenAI error object (Anthropic's on the Messages
routes: the document says which, and `anthropic_errors_in_their_shape` checks it), invalid bodies are refused
with a 4xx, and valid bodies are accepted unless refused for a documented cross-field rule.
Once open, once with keys: then the document itself needs a credential.
"""
from __future__ import annotations

import json
import os
from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import GenerationConfig
from schemathesis.specs.openapi.checks import (content_type_conformance, negative_data_rejection,
                                               response_schema_conformance, status_code_conformance)

from audit_log import audit_lines
from server_process import ServerProcess

MODEL = "demo"
KEY, USER_KEY, OPS_KEY = "fuzz-key-ffffffffffffffffff", "user-key-uuuuuuuuuuuuuuuuuu", "ops-key-oooooooooooooooooo"
# A small context keeps every generated completion short (the keyed server's smaller still).
SERVE = ("--served-model-name", MODEL, "--dtype", "float32")
# Per operation and mode; the same examples every run unless BASTION_FUZZ_RANDOM is set.
EXAMPLES = int(os.environ.get("BASTION_FUZZ_EXAMPLES", "15"))
DERANDOMIZE = not os.environ.get("BASTION_FUZZ_RANDOM")
# Refusals of valid-looking bodies for rules the document states in words (description).
CROSS_FIELD = ("context_length_exceeded", "maximum context length", "min_tokens", "outside the vocabulary", "not supported",
               "only allowed when 'stream' is true", "needs 'logprobs'", "give exactly one of",
               "the prompt is empty", "must not be empty", "chat template", "best_of",
               "response_format", "continue_final_message", "invalid_structured_output",
               "must be unique", "not in 'tools'", "'tools' gives none", "only assistant messages carry",
               "must be a JSON object", "0 only with 'echo'", "not available when 'stream' is true",
               "--max-logprobs", "invalid 'tools.", "invalid 'output_config.format.schema'",
               "give only one")


@schemathesis.check
def positive_data_accepted(ctx, response, case) -> None:
    """Valid data gets a 2xx, or a 400 for a rule the document states in words (or 404/403/429)."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code < 400:
        return None
    if response.status_code == 400:
        error = response.json()["error"]
        assert any(rule in error["message"] or rule == error.get("code") for rule in CROSS_FIELD), \
            f"valid body refused: {error}"
        return None
    assert response.status_code in (403, 404, 429), f"valid body got {response.status_code}"
    return None


def _integers(value):
    """`value` with every float like 2.0 written as 2: JSON Schema calls 2.0 an integer, the
    server wants an integer written as one (its document says so)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, list):
        return [_integers(v) for v in value]
    if isinstance(value, dict):
        return {k: _integers(v) for k, v in value.items()}
    return value


@schemathesis.check
def no_error_event(ctx, response, case) -> None:
    """A stream that began with 200 must not end with a server error event (OpenAI's
    `data: {"error"...}`, Anthropic's `error` event, or the Responses API's typed `error`)."""
    if "text/event-stream" in response.headers.get("content-type", [""])[0]:
        for line in response.text.splitlines():
            if line.startswith("data: {\"error\"") or line.startswith("data: {\"type\":\"error\""):
                payload = json.loads(line[6:])  # NOTE: Anthropic's nests the error; the Responses API's does not
                error = payload["error"] if isinstance(payload.get("error"), dict) else payload
                assert not str(error.get("code", "")).startswith("5") and \
                    error.get("type") not in ("server_error", "api_error"), f"server error mid-stream: {line}"


@schemathesis.check
def anthropic_errors_in_their_shape(ctx, response, case) -> None:
    """On the Messages routes every refusal is Anthropic's error object, nothing more."""
    if response.status_code >= 400 and case.operation.path.startswith("/v1/messages"):
        body = response.json()
        assert set(body) == {"type", "error"} and body["type"] == "error", body
        assert set(body["error"]) == {"type", "message"}, body


# The failures show the bodies as sent (the keys are the test's own).
CONFIG = schemathesis.Config.from_dict({"output": {"sanitization": {"enabled": False}}})
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection, positive_data_accepted,
          no_error_event, anthropic_errors_in_their_shape]


def fuzz(url: str, headers: dict[str, str], statuses: Counter) -> list[str]:
    """Fuzz every operation of the server's own document; the failures, one line each.
    `statuses` counts (operation, mode, status) of every answer.

    Two phases per operation: schemathesis' coverage phase (each bound at its edge, and each
    bound, type and required field broken one at a time), then hypothesis' generated bodies,
    valid and invalid."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", headers=headers, timeout=30,
                                           config=CONFIG)
    failures = []

    def send(case, mode: GenerationMode, served: bool = True) -> None:
        body = case.body
        # NOTE: a string model is never the invalid part; most requests name the served one so
        # that they reach the engine.
        if served and isinstance(body, dict) and isinstance(body.get("model"), str):
            body["model"] = MODEL
        if mode.is_positive and isinstance(body, dict):
            case.body = _integers(body)
        response = case.call_and_validate(base_url=url, headers=headers, checks=CHECKS, timeout=60)
        statuses[case.operation.label, mode.value, response.status_code] += 1

    for result in schema.get_all_operations():
        operation = result.ok()
        modes = [GenerationMode.POSITIVE, *([GenerationMode.NEGATIVE] if operation.body else [])]
        try:
            for case in schema.iter_coverage_cases(operation, generation_modes=modes,
                                                   generation_config=GenerationConfig()):
                send(case, case.meta.generation.mode)
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - report every operation
            failures.append(f"{operation.label} [coverage]: {exc}"[:3000])
        for mode in modes:
            @given(case=operation.as_strategy(generation_mode=mode),
                   served=st.sampled_from([True, True, True, False]))
            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=DERANDOMIZE,
                      phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            def run(case, served):
                send(case, mode, served)

            try:
                run()
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - report every operation
                failures.append(f"{operation.label} [{mode.value}]: {exc}"[:3000])
    return failures


def reached_engine(statuses: Counter) -> None:
    """The fuzz was not all refusals: every generation route answered some valid bodies."""
    for label in ("POST /v1/chat/completions", "POST /v1/completions", "POST /generate", "POST /v1/messages",
                  "POST /v1/messages/count_tokens", "POST /v1/responses"):
        assert statuses[label, "positive", 200] > 0, (label, sorted(statuses.items()))


@pytest.fixture(scope="module")
def open_server():
    proc = ServerProcess(*SERVE, "--max-model-len", "48")
    yield proc
    proc.kill()


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    keys = root / "keys.toml"
    keys.write_text(f"[keys.fuzz]\nkey = '{KEY}'\nscopes = ['inference', 'metrics', 'admin']\n"
                    f"[keys.user]\nkey = '{USER_KEY}'\nscopes = ['inference']\n"
                    f"[keys.ops]\nkey = '{OPS_KEY}'\nscopes = ['metrics']\n")
    proc = ServerProcess(*SERVE, "--api-key-file", str(keys), "--max-model-len", "24",
                         "--audit-log", str(root / "audit.log"))
    proc.audit = root / "audit.log"
    yield proc
    proc.kill()


def test_the_open_server_documents_and_survives_every_operation(open_server):
    spec = httpx.get(f"{open_server.url}/openapi.json", timeout=10)
    assert spec.status_code == 200 and spec.headers["content-type"] == "application/json"
    doc = spec.json()
    assert "securitySchemes" not in doc["components"]  # no credentials: nothing to present
    chat = doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    assert chat["n"]["maximum"] == 64 and chat["n"]["minimum"] == 1
    assert chat["stop"]["anyOf"][1]["maxItems"] == 16
    assert chat["top_logprobs"]["anyOf"][0] == {"type": "integer", "minimum": 0, "maximum": 20}
    for path in ("/docs", "/redoc"):
        assert httpx.get(f"{open_server.url}{path}", timeout=10).status_code == 404
    statuses = Counter()
    failures = fuzz(open_server.url, {}, statuses)
    assert not failures, "\n\n".join(failures)
    reached_engine(statuses)


def test_the_document_needs_a_key_when_keys_are_configured_then_fuzz_with_it(keyed_server):
    url = f"{keyed_server.url}/openapi.json"
    refused = httpx.get(url, timeout=10)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(url, headers={"x-api-key": OPS_KEY}, timeout=10).status_code == 403
    doc = httpx.get(url, headers={"Authorization": f"Bearer {USER_KEY}"}, timeout=10).json()
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    assert chat["security"] == [{"bearer": ["inference"]}, {"apiKey": ["inference"]}]
    assert {"400", "401", "403", "404", "413", "429", "503"} <= set(chat["responses"])
    assert doc["paths"]["/health"]["get"]["security"] == []
    def documents(lines):
        return [(a["principal"], a["status"]) for a in lines if a["path"] == "/openapi.json"]
    audited = audit_lines(keyed_server.audit, lambda lines: len(documents(lines)) >= 3)
    assert documents(audited) == [(None, 401), (None, 403), ("user", 200)]  # refusals are audited too
    text = json.dumps(doc)
    for secret in (KEY, USER_KEY, OPS_KEY, "fuzz", "keys.toml", "127.0.0.1", "/tmp"):
        assert secret not in text, secret
    statuses = Counter()
    # NOTE: the document offers both schemes and schemathesis fills the one not given; a client
    # sending both must send the same key in each (else 401)
    failures = fuzz(keyed_server.url, {"Authorization": f"Bearer {KEY}", "x-api-key": KEY}, statuses)
    assert not failures, "\n\n".join(failures)
    reached_engine(statuses)


# The bodies the fuzz found answered with a 5xx (or a dead rank) before their fixes.
FOUND = [
    ("/v1/completions", {"prompt": [[-756, -11188862645, -443]]}, "prompt.0.0",
     "greater than or equal to 0"),
    ("/v1/completions", {"prompt": "hi", "seed": 10**29}, "seed", "64-bit"),
    ("/v1/completions", {"prompt": "hi", "top_k": 10**29}, "top_k", "2**63 - 1"),
    ("/v1/completions", {"prompt": "hi", "stop_token_ids": [10**29]}, "stop_token_ids", "2**63 - 1"),
    ("/generate", {"text": "hi", "sampling_params": {"sampling_seed": 2**63}},
     "sampling_params.sampling_seed", "64-bit"),
    ("/v1/completions", {"prompt": "\ud800 lone"}, "prompt", "lone surrogate"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a \udc00"}]}, "messages",
     "lone surrogate"),
    ("/tokenize", {"prompt": "\ud800"}, "prompt", "lone surrogate"),
    ("/generate", {"text": "\udc00"}, "text", "lone surrogate"),
    ("/v1/responses", {"input": [{"role": "user", "content": [{"text": "", "type": [None, None]}]}]},
     "input.0.content.0", "not supported"),
]
# Refusals that quote the client: the answer could not be encoded (a 500); now '?' stands in.
QUOTED = [("/v1/chat/completions", {"model": "\ud800 x", "messages": [{"role": "user", "content": "hi"}]},
           "The model '? x'"),
          ("/detokenize", {"model": "\udfff", "tokens": [1]}, "The model '?'")]


def test_what_the_fuzz_found_is_a_400_naming_the_field_and_the_ranks_live_on(open_server):
    with httpx.Client(base_url=open_server.url, timeout=60) as client:
        for path, body, param, words in FOUND:
            # NOTE: sent as Python's json writes it: lone surrogates as \\u escapes, as a client may
            reply = client.post(path, content=json.dumps({"model": MODEL, **body}),
                                headers={"content-type": "application/json"})
            error = reply.json()["error"]
            assert reply.status_code == 400 and error["param"] == param and words in error["message"], \
                (path, body, reply.text)
        for path, body, quoted in QUOTED:
            reply = client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
            assert reply.status_code == 404 and quoted in reply.json()["error"]["message"], reply.text
        # the largest seed with n sequences: each sequence's seed wraps, none is refused mid-group
        # (one was, and left its siblings running for a request the rank no longer knew: it died)
        reply = client.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2,
                                                     "seed": 2**63 - 1, "n": 3})
        assert reply.status_code == 200 and len(reply.json()["choices"]) == 3
        assert client.get("/health").status_code == 200
