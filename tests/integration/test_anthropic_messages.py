"""Anthropic's Messages API on a real keyed server, through the `anthropic` SDK and httpx: a
whole message and a stream (its events in Anthropic's order, its final message equal to the
whole one, greedy), stop reasons, a tool round trip through the chat template, count_tokens
equal to the prompt the template makes, `x-api-key` as a credential on every route, and every
refusal (auth guard, admission, body limit, the route) in Anthropic's error shape; the requests
are audited and counted like the chat route's.

One server for the module (the demo model with a Hermes-style template that renders tools); the
SDK leaves out `temperature` in this version, so greedy requests send it as `extra_body`."""
from __future__ import annotations

import json

import anthropic
import httpx
import pytest
from transformers import AutoTokenizer

from audit_log import audit_lines
from server_process import ServerProcess
from tool_templates import HERMES_STYLE_TEMPLATE, model_with_template

MODEL = "demo"
USER, OPS, LIMITED = "user-key-uuuuuuuuuuuuuuuuuu", "ops-key-oooooooooooooooooo", "limited-key-llllllllllllll"
KEYS = f"""
[keys.user]
key = "{USER}"
[keys.ops]
key = "{OPS}"
scopes = ["metrics"]
[keys.limited]
key = "{LIMITED}"
requests_per_minute = 1
"""
BODY_LIMIT = 64 * 1024
GREEDY = {"temperature": 0}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
LONG = [{"role": "user", "content": "Explain how Python lists work."}]  # greedy: 15 tokens, then it ends
WEATHER = {"name": "get_weather", "description": "The weather in a city for some days",
           "input_schema": {"type": "object", "additionalProperties": False, "required": ["city", "days"],
                            "properties": {"city": {"type": "string", "maxLength": 12},
                                           "days": {"type": "integer", "minimum": 1, "maximum": 7}}}}
TIME = {"name": "get_time", "input_schema": {"type": "object", "required": ["zone"],
                                             "properties": {"zone": {"enum": ["UTC", "CET"]}}}}
FORCED = {"type": "tool", "name": "get_weather"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return model_with_template(tmp_path_factory.mktemp("messages") / "demo-tools", HERMES_STYLE_TEMPLATE)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("messages-keys")
    (root / "keys.toml").write_text(KEYS)
    proc = ServerProcess("--model", str(model_dir), "--dtype", "float32", "--served-model-name", MODEL,
                         "--api-key-file", str(root / "keys.toml"), "--audit-log", str(root / "audit.log"),
                         "--max-request-body-bytes", str(BODY_LIMIT), http={"headers": {"x-api-key": OPS}})
    proc.audit = root / "audit.log"
    yield proc
    proc.kill()


@pytest.fixture(scope="module")
def client(server):
    return anthropic.Anthropic(base_url=server.url, api_key=USER, max_retries=0)


def create(client, **fields):
    fields = {"model": MODEL, "max_tokens": 12, "messages": ASK, "extra_body": GREEDY, **fields}
    return client.messages.create(**fields)


def raw_events(server, body: dict, headers=None) -> list[tuple[str, dict]]:
    """(event name, data) of each event of a streamed answer, as sent."""
    headers = headers or {"x-api-key": USER}
    events, name = [], None
    with httpx.stream("POST", f"{server.url}/v1/messages", json={**body, "stream": True},
                      headers=headers, timeout=60) as reply:
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
        for line in reply.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
                name = None
    return events


def test_a_message_and_its_stream_agree_event_by_event(server, client):
    whole = create(client, messages=LONG)
    assert whole.type == "message" and whole.role == "assistant" and whole.model == MODEL
    assert whole.id.startswith("msg_") and whole.stop_reason == "max_tokens" and whole.stop_sequence is None
    [block] = whole.content
    assert block.type == "text" and block.text
    assert whole.usage.output_tokens == 12 and whole.usage.input_tokens > 0
    with client.messages.stream(model=MODEL, max_tokens=12, messages=LONG, extra_body=GREEDY) as stream:
        texts = [e.text for e in stream if e.type == "text"]
        final = stream.get_final_message()
    assert "".join(texts) == block.text
    fields = ("type", "role", "model", "stop_reason", "stop_sequence", "usage")
    assert [getattr(final, f) for f in fields] == [getattr(whole, f) for f in fields]
    assert [(b.type, b.text) for b in final.content] == [("text", block.text)]
    events = raw_events(server, {"model": MODEL, "max_tokens": 12, "messages": LONG, **GREEDY})
    names = [name for name, _ in events]
    assert all(data["type"] == name for name, data in events)  # every event names its data
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert set(names[3:-3]) == {"content_block_delta"} and names[-3:] == ["content_block_stop", "message_delta",
                                                                          "message_stop"]
    start, delta = events[0][1]["message"], events[-2][1]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"] == {"input_tokens": whole.usage.input_tokens, "output_tokens": 0}
    assert delta["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert delta["usage"] == {"output_tokens": 12}
    assert "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta") == block.text


def test_stop_reasons_end_turn_and_stop_sequence(client):
    text = create(client, max_tokens=12, messages=LONG).content[0].text
    stop = text[3:6]
    cut = create(client, max_tokens=12, messages=LONG, stop_sequences=["never-in-this-text", stop])
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop
    assert cut.content[0].text == text[:text.index(stop)]
    ended = create(client, max_tokens=60, messages=LONG)  # the demo model ends its turn itself
    assert ended.stop_reason == "end_turn" and ended.usage.output_tokens < 60
    assert ended.content[0].text.startswith(text)


def test_a_forced_tool_call_and_its_round_trip(server, client, model_dir):
    answer = create(client, max_tokens=60, tools=[WEATHER, TIME], tool_choice=FORCED)
    assert answer.stop_reason == "tool_use"
    [call] = answer.content
    assert call.type == "tool_use" and call.name == "get_weather" and call.id.startswith("toolu_")
    assert set(call.input) == {"city", "days"} and isinstance(call.input["city"], str)
    assert isinstance(call.input["days"], int) and 1 <= call.input["days"] <= 7
    with client.messages.stream(model=MODEL, max_tokens=60, messages=ASK, tools=[WEATHER, TIME],
                                tool_choice=FORCED, extra_body=GREEDY) as stream:
        final = stream.get_final_message()
    assert [(b.type, b.name, b.input) for b in final.content] == [("tool_use", "get_weather", call.input)]
    assert final.stop_reason == "tool_use"
    events = raw_events(server, {"model": MODEL, "max_tokens": 60, "messages": ASK, "tools": [WEATHER, TIME],
                                 "tool_choice": FORCED, **GREEDY})
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert starts == [{"type": "tool_use", "id": starts[0]["id"], "name": "get_weather", "input": {}}]
    pieces = [d["delta"] for n, d in events if n == "content_block_delta"]
    assert {p["type"] for p in pieces} == {"input_json_delta"}
    assert json.loads("".join(p["partial_json"] for p in pieces)) == call.input

    result = "Sunny and 21 degrees in Paris all week"
    conversation = ASK + [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in answer.content]},
                          {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                                        "content": [{"type": "text", "text": result}]}]}]
    after = create(client, max_tokens=8, messages=conversation, tools=[WEATHER, TIME])
    assert after.content and after.content[0].type == "text" and after.stop_reason in ("max_tokens", "end_turn")
    # The prompt is the chat template's rendering of the same conversation in OpenAI's terms:
    reference = AutoTokenizer.from_pretrained(model_dir)
    as_chat = ASK + [{"role": "assistant", "content": "", "tool_calls": [{"id": call.id, "type": "function",
                      "function": {"name": "get_weather", "arguments": call.input}}]},
                     {"role": "tool", "tool_call_id": call.id, "content": result}]
    tools = [{"type": "function", "function": {"name": t["name"], "parameters": t["input_schema"],
                                               **({"description": t["description"]} if "description" in t else {})}}
             for t in (WEATHER, TIME)]
    ids = reference.apply_chat_template(as_chat, tools=tools, add_generation_prompt=True, tokenize=True,
                                        return_dict=False)
    assert after.usage.input_tokens == len(ids)
    assert f"<tool_response>\n{result}\n</tool_response>" in reference.decode(ids)
    counted = client.messages.count_tokens(model=MODEL, messages=conversation, tools=[WEATHER, TIME])
    assert counted.input_tokens == len(ids)


def test_count_tokens_is_the_prompt_a_message_gets(server, client, model_dir):
    system = [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind.",
                                                     "cache_control": {"type": "ephemeral"}}]
    counted = client.messages.count_tokens(model=MODEL, system=system, messages=ASK)
    answer = create(client, max_tokens=2, system=system, metadata={"user_id": "u-1"},
                    thinking={"type": "enabled", "budget_tokens": 1024})
    assert counted.input_tokens == answer.usage.input_tokens
    reference = AutoTokenizer.from_pretrained(model_dir)
    ids = reference.apply_chat_template([{"role": "system", "content": "Be brief.\n\nBe kind."}, *ASK],
                                        add_generation_prompt=True, tokenize=True, return_dict=False)
    assert counted.input_tokens == len(ids)


def test_a_last_assistant_message_is_continued(server, client):
    prefill = ASK + [{"role": "assistant", "content": "The weather in Paris is"}]
    answer = create(client, max_tokens=8, messages=prefill)
    chat = httpx.post(f"{server.url}/v1/chat/completions", headers={"x-api-key": USER}, timeout=60, json={
        "model": MODEL, "messages": prefill, "max_tokens": 8, "temperature": 0,
        "add_generation_prompt": False, "continue_final_message": True}).json()
    assert answer.content[0].text == chat["choices"][0]["message"]["content"]


def test_output_config_format_constrains_the_text(client):
    schema = {"type": "object", "additionalProperties": False, "required": ["ok"],
              "properties": {"ok": {"type": "boolean"}}}
    answer = create(client, max_tokens=20, output_config={"format": {"type": "json_schema", "schema": schema}})
    assert answer.stop_reason == "end_turn"
    assert set(json.loads(answer.content[0].text)) == {"ok"}


def test_x_api_key_is_a_credential_on_every_route(server):
    body = {"model": MODEL, "max_tokens": 2, "messages": ASK}
    for headers in ({"x-api-key": USER}, {"Authorization": f"Bearer {USER}"},
                    {"x-api-key": USER, "Authorization": f"Bearer {USER}", "anthropic-version": "2023-06-01",
                     "anthropic-beta": "prompt-caching-2024-07-31"}):
        assert httpx.post(f"{server.url}/v1/messages", json=body, headers=headers, timeout=60).status_code == 200
    chat = httpx.post(f"{server.url}/v1/chat/completions", headers={"x-api-key": USER}, timeout=60,
                      json={"model": MODEL, "max_tokens": 2, "messages": ASK})
    assert chat.status_code == 200 and chat.json()["object"] == "chat.completion"
    # two different credentials: refused, whichever is the valid one, in each family's shape
    both = {"x-api-key": USER, "Authorization": "Bearer another-key"}
    refused = httpx.post(f"{server.url}/v1/messages", json=body, headers=both, timeout=60)
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
    assert "different credentials" in refused.json()["error"]["message"]
    refused = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=both, timeout=60)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"


def test_a_wrong_key_gets_anthropics_401_and_the_openai_routes_keep_theirs(server):
    wrong = anthropic.Anthropic(base_url=server.url, api_key="not-a-key-xxxxxxxxxxxxxxx", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as err:
        wrong.messages.create(model=MODEL, max_tokens=2, messages=ASK)
    assert err.value.status_code == 401
    assert err.value.body == {"type": "error", "error": {"type": "authentication_error",
                                                         "message": "invalid credentials"}}
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.count_tokens(model=MODEL, messages=ASK)
    for path in ("/v1/messages", "/v1/messages/nowhere"):  # unknown paths of the family too
        reply = httpx.post(f"{server.url}{path}", json={}, timeout=30)
        assert reply.status_code == 401 and reply.json()["error"]["type"] == "authentication_error"
    openai_shape = httpx.post(f"{server.url}/v1/chat/completions", json={}, headers={"x-api-key": "nope"})
    assert openai_shape.status_code == 401 and openai_shape.json()["error"]["code"] == "invalid_api_key"


def anthropic_error(reply: httpx.Response, status: int, kind: str) -> str:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"type", "error"} and body["type"] == "error" and set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == kind, body
    return body["error"]["message"]


@pytest.mark.parametrize("fields, words", [
    ({"max_tokens": None}, "'max_tokens'"),
    ({"temperature": 1.5}, "'temperature'"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "'messages.0"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]},
     "'messages.0"),
    ({"mcp_servers": [{"url": "https://example.com"}]}, "'mcp_servers'"),
    ({"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice.name"),
    ({"tool_choice": {"type": "any"}}, "'tools' gives none"),
    ({"tools": [{**WEATHER, "input_schema": {"type": "frob"}}], "tool_choice": FORCED}, "'tools.0.input_schema'"),
])
def test_bad_bodies_are_anthropic_400s_naming_the_field(server, fields, words):
    body = {k: v for k, v in {"model": MODEL, "max_tokens": 4, "messages": ASK, **fields}.items() if v is not None}
    reply = httpx.post(f"{server.url}/v1/messages", json=body, headers={"x-api-key": USER}, timeout=60)
    assert words in anthropic_error(reply, 400, "invalid_request_error")


def test_every_refusal_of_the_family_is_in_anthropics_shape(server, client):
    url, user = f"{server.url}/v1/messages", {"x-api-key": USER}
    body = {"model": MODEL, "max_tokens": 2, "messages": ASK}
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="claude-sonnet-4-5", max_tokens=2, messages=ASK)
    anthropic_error(httpx.post(url, json={**body, "model": "nope"}, headers=user), 404, "not_found_error")
    anthropic_error(httpx.post(url, json=body, headers={"x-api-key": OPS}), 403, "permission_error")
    anthropic_error(httpx.get(url, headers=user), 405, "invalid_request_error")
    big = {**body, "messages": [{"role": "user", "content": "x" * BODY_LIMIT}]}
    anthropic_error(httpx.post(url, json=big, headers=user), 413, "request_too_large")
    limited = {"x-api-key": LIMITED}
    assert httpx.post(url, json=body, headers=limited, timeout=60).status_code == 200
    message = anthropic_error(httpx.post(url, json=body, headers=limited, timeout=60), 429, "rate_limit_error")
    assert "requests per minute" in message or "rate" in message


def test_the_routes_are_audited_and_counted(server, client):
    refused = httpx.post(f"{server.url}/v1/messages", json={}, headers={"x-api-key": "nope"}, timeout=30)
    assert refused.status_code == 401
    before = server.metric("bastion_http_requests_total", route="/v1/messages", status="200")
    counted = server.metric("bastion_http_requests_total", route="/v1/messages/count_tokens", status="200")
    answer = create(client, max_tokens=3)
    client.messages.count_tokens(model=MODEL, messages=ASK)
    assert server.metric("bastion_http_requests_total", route="/v1/messages", status="200") == before + 1
    assert server.metric("bastion_http_requests_total", route="/v1/messages/count_tokens", status="200") == counted + 1
    lines = audit_lines(server.audit, lambda ls: any(a["path"] == "/v1/messages/count_tokens" for a in ls))
    messages = [a for a in lines if a["path"] == "/v1/messages" and a["status"] == 200]
    last = messages[-1]
    assert (last["principal"], last["model"], last["method"]) == ("user", MODEL, "POST")
    assert (last["prompt_tokens"], last["completion_tokens"]) == (answer.usage.input_tokens,
                                                               answer.usage.output_tokens)
    assert any(a["path"] == "/v1/messages" and a["status"] == 401 and a["principal"] is None for a in lines)
    text = server.audit.read_text()
    assert ASK[0]["content"] not in text and USER not in text  # no user content, no key
