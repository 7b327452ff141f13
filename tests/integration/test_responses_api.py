"""OpenAI's Responses API on a real server, through the official `openai` SDK: text, the typed
stream (events in order, its final response equal to the whole one), a function tool round
trip, `responses.parse` with a pydantic model, and stored responses: `previous_response_id`
found by whichever of two API servers a follow-up lands on, GET and DELETE, and none of it for
another principal (404). The answers are checked against chat completions of the same
conversation (the Responses route runs the chat path). One server for the module: the demo
model with a Hermes-style template that renders tools, two API servers, two keys, an audit log.
"""
from __future__ import annotations

import json

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from audit_log import audit_lines
from server_process import ServerProcess
from tool_templates import HERMES_STYLE_TEMPLATE, model_with_template

MODEL = "demo"
ALICE, BOB = "alice-key-aaaaaaaaaaaaaaaaaaaaaa", "bob-key-bbbbbbbbbbbbbbbbbbbbbbbbbb"
ASK = "Say hi"  # the demo model ends this answer in 16 tokens (so streams end with response.completed)
SECRET = "Zanzibar-7f3c"  # user text that must never reach the logs or metrics
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                          "properties": {"city": {"type": "string", "maxLength": 10}}}}
FORCED = {"type": "function", "name": "get_weather"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("responses")
    model = model_with_template(root / "demo-tools", HERMES_STYLE_TEMPLATE)
    keys = root / "keys.toml"
    keys.write_text(f"[keys.alice]\nkey = '{ALICE}'\nscopes = ['inference', 'metrics']\n"
                    f"[keys.bob]\nkey = '{BOB}'\nscopes = ['inference']\n")
    proc = ServerProcess("--model", str(model), "--dtype", "float32", "--served-model-name", MODEL,
                         "--api-server-count", "2", "--api-key-file", str(keys),
                         "--audit-log", str(root / "audit.log"),
                         http={"headers": {"Authorization": f"Bearer {ALICE}"}})
    proc.audit = root / "audit.log"
    yield proc
    proc.kill()


def sdk(server, key: str = ALICE) -> openai.OpenAI:
    """A client with a connection of its own (a fresh one lands on either API server)."""
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0,
                         http_client=httpx.Client(timeout=60))


@pytest.fixture(scope="module")
def client(server):
    return sdk(server)


def comparable(response: dict) -> dict:
    """A Response without what differs between two answers to the same request: ids and times
    (and the SDK's `parsed`, which a stream's final response has), and prefix-cache hits."""
    def item(entry: dict) -> dict:
        out = {k: v for k, v in entry.items() if k not in ("id", "call_id", "parsed_arguments")}
        if "content" in out:
            out["content"] = [{k: v for k, v in part.items() if k != "parsed"} for part in out["content"]]
        return out
    usage = response["usage"] and {**response["usage"], "input_tokens_details": None}
    return {**{k: v for k, v in response.items() if k not in ("id", "created_at", "output_parsed")},
            "output": [item(entry) for entry in response["output"]], "usage": usage}


def test_text_answer_is_chat_completions_answer_in_the_response_shape(client):
    response = client.responses.create(model=MODEL, input=ASK, instructions="Be brief.", temperature=0,
                                       max_output_tokens=64, metadata={"case": "text"}, user="u-1")
    chat = client.chat.completions.create(model=MODEL, temperature=0, max_tokens=64, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": ASK}])
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.incomplete_details is None
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert message.id.startswith("msg_")
    [part] = message.content
    assert part.type == "output_text" and part.annotations == []
    assert response.output_text == chat.choices[0].message.content and response.output_text
    usage = response.usage
    assert (usage.input_tokens, usage.output_tokens) == (chat.usage.prompt_tokens, chat.usage.completion_tokens)
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0 and usage.input_tokens_details.cached_tokens >= 0
    assert (response.model, response.temperature, response.top_p, response.max_output_tokens) == (MODEL, 0, 1, 64)
    assert (response.instructions, response.metadata, response.user) == ("Be brief.", {"case": "text"}, "u-1")
    assert response.tool_choice == "auto" and response.tools == [] and response.store is True
    assert response.text.format.type == "text" and response.parallel_tool_calls is True


def test_out_of_tokens_is_incomplete(client):
    response = client.responses.create(model=MODEL, input=ASK, temperature=0, max_output_tokens=3)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete" and response.usage.output_tokens == 3


def test_stream_events_come_in_order_and_end_in_the_whole_answer(server, client):
    fields = dict(model=MODEL, input=ASK, instructions="Be brief.", temperature=0, max_output_tokens=64)
    with client.responses.stream(**fields) as stream:
        events = list(stream)
        final = stream.get_final_response()
    whole = client.responses.create(**fields)
    assert comparable(final.model_dump()) == comparable(whole.model_dump())
    kinds = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas and set(kinds[4:-4]) == {"response.output_text.delta"}
    assert "".join(deltas) == whole.output_text == events[-4].text
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    assert events[2].item.status == "in_progress" and events[-2].item.status == "completed"
    # on the wire: each event's `event:` line names its type, and no [DONE] follows
    with httpx.stream("POST", f"{server.url}/v1/responses", json={**fields, "stream": True}, timeout=60,
                      headers={"Authorization": f"Bearer {ALICE}"}) as reply:
        lines = [line for line in reply.iter_lines() if line]
    names = [line[len("event: "):] for line in lines if line.startswith("event: ")]
    datas = [json.loads(line[len("data: "):]) for line in lines if line.startswith("data: ")]
    assert names == [d["type"] for d in datas] and "[DONE]" not in " ".join(lines)
    assert collapsed(names) == collapsed(kinds)  # (how text is cut into deltas varies with timing)
    assert "".join(d["delta"] for d in datas if "delta" in d) == whole.output_text


def collapsed(kinds: list[str]) -> list[str]:
    """Event types with each run of the same type as one."""
    return [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k]


def test_a_stream_cut_by_max_output_tokens_ends_with_response_incomplete(client):
    events = list(client.responses.create(model=MODEL, input=ASK, temperature=0, max_output_tokens=3,
                                          stream=True))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"


def test_function_tool_round_trip(client):
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.responses.create(model=MODEL, input=ask, tools=[WEATHER], tool_choice=FORCED,
                                    temperature=0, max_output_tokens=40)
    [call] = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")
    assert set(json.loads(call.arguments)) == {"city"}
    assert first.status == "completed" and first.tool_choice.name == "get_weather"
    # streamed: the arguments' deltas join to the whole call
    with client.responses.stream(model=MODEL, input=ask, tools=[WEATHER], tool_choice=FORCED,
                                 temperature=0, max_output_tokens=40) as stream:
        events = list(stream)
    pieces = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert "".join(pieces) == done.arguments == call.arguments and done.name == "get_weather"
    assert comparable(events[-1].response.model_dump()) == comparable(first.model_dump())
    # the call and its output go back as input items; the answer is chat's to the same conversation
    result = json.dumps({"city": "Paris", "sky": "clear"})
    second = client.responses.create(
        model=MODEL, tools=[WEATHER], tool_choice="none", temperature=0, max_output_tokens=24,
        input=[*ask, call.model_dump(exclude_none=True),
               {"type": "function_call_output", "call_id": call.call_id, "output": result}])
    chat = client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=24, tool_choice="none",
        tools=[{"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}],
        messages=[*ask, {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.call_id, "type": "function",
             "function": {"name": call.name, "arguments": call.arguments}}]},
            {"role": "tool", "tool_call_id": call.call_id, "content": result}])
    assert second.output[0].type == "message"
    assert second.output_text == chat.choices[0].message.content
    assert second.usage.input_tokens == chat.usage.prompt_tokens > first.usage.input_tokens


class Trip(BaseModel):
    city: str = Field(max_length=8)
    days: int = Field(ge=1, le=7)


def test_parse_with_a_pydantic_text_format(client):
    parsed = client.responses.parse(model=MODEL, input="Plan a trip.", text_format=Trip, temperature=0,
                                    max_output_tokens=64)
    assert parsed.status == "completed"
    assert isinstance(parsed.output_parsed, Trip) and 1 <= parsed.output_parsed.days <= 7
    assert parsed.text.format.type == "json_schema" and parsed.text.format.name == "Trip"


def api_server_of(server, request_ids: set[str]) -> dict[str, str]:
    """The API server that answered each request (from the audit log)."""
    lines = audit_lines(server.audit, lambda ls: request_ids <= {a["request_id"] for a in ls})
    return {a["request_id"]: a["server"] for a in lines if a["request_id"] in request_ids}


def test_every_follow_up_is_found_whichever_api_server_it_lands_on(server, client):
    first = client.responses.create(model=MODEL, input=f"My code word is {SECRET}.", temperature=0,
                                    max_output_tokens=4)
    kept = first.usage.input_tokens + first.usage.output_tokens
    served, ids = {}, set()
    for _ in range(40):
        with sdk(server) as fresh:  # a new connection each time
            raw = fresh.responses.with_raw_response.create(model=MODEL, input="And then?", temperature=0,
                                                           previous_response_id=first.id, max_output_tokens=2)
        follow_up = raw.parse()
        assert follow_up.previous_response_id == first.id and follow_up.usage.input_tokens > kept
        ids.add(raw.headers["x-request-id"])
        served = api_server_of(server, ids)
        if len(ids) >= 4 and set(served.values()) == {"api-server-0", "api-server-1"}:
            break
    assert set(served.values()) == {"api-server-0", "api-server-1"}, served
    # a chain: a follow-up of a follow-up carries the whole conversation
    second = client.responses.create(model=MODEL, input="Go on.", previous_response_id=follow_up.id,
                                     temperature=0, max_output_tokens=2)
    assert second.usage.input_tokens > follow_up.usage.input_tokens + follow_up.usage.output_tokens
    assert server.metric("bastion_responses_stored") >= 3
    exposition = httpx.get(f"{server.url}/metrics", timeout=10, **server.http).text
    assert server.metric("bastion_http_requests_total", route="/v1/responses", status="200") >= len(ids)
    assert SECRET not in exposition and SECRET not in server.audit.read_text()


def test_get_and_delete_and_another_principal_sees_nothing(server, client):
    mine = client.responses.create(model=MODEL, input=ASK, temperature=0, max_output_tokens=4)
    with sdk(server) as fresh:
        assert comparable(fresh.responses.retrieve(mine.id).model_dump()) == comparable(mine.model_dump())
    bob = sdk(server, BOB)
    for call in (lambda: bob.responses.retrieve(mine.id), lambda: bob.responses.delete(mine.id),
                 lambda: bob.responses.create(model=MODEL, input="hi", previous_response_id=mine.id,
                                              max_output_tokens=2)):
        with pytest.raises(openai.NotFoundError) as refused:
            call()
        assert refused.value.body["code"] == "response_not_found"
    assert client.responses.retrieve(mine.id).id == mine.id  # still there for its owner
    reply = httpx.delete(f"{server.url}/v1/responses/{mine.id}", timeout=10,
                         headers={"Authorization": f"Bearer {ALICE}"})
    assert reply.status_code == 200 and reply.json() == {"id": mine.id, "object": "response", "deleted": True}
    for call in (lambda: client.responses.retrieve(mine.id), lambda: client.responses.delete(mine.id),
                 lambda: client.responses.create(model=MODEL, input="hi", previous_response_id=mine.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    lines = audit_lines(server.audit, lambda ls: any(a["method"] == "DELETE" and a["status"] == 200 for a in ls))
    assert {(a["principal"], a["status"]) for a in lines if a["method"] == "DELETE"} >= {("bob", 404), ("alice", 200)}


def test_store_false_keeps_nothing(client):
    response = client.responses.create(model=MODEL, input=ASK, store=False, max_output_tokens=2)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


REFUSED = [
    ({"background": True}, "background"),
    ({"tools": [{"type": "web_search"}]}, "tools.0"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]},
     "input.0.content.0"),
    ({"input": [{"type": "file_search_call", "id": "x"}]}, "input.0"),
    ({"include": ["reasoning.encrypted_content"]}, "include"),
    ({"truncation": "auto"}, "truncation"),
    ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
      "tools": [WEATHER], "tool_choice": "required"}, "tool_choice"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}]},
     "input.0.arguments"),
]


@pytest.mark.parametrize("fields, param", REFUSED)
def test_what_is_not_implemented_is_a_400_naming_the_field(server, fields, param):
    body = {"model": MODEL, "input": "hi", "max_output_tokens": 2, **fields}
    reply = httpx.post(f"{server.url}/v1/responses", json=body, timeout=30,
                       headers={"Authorization": f"Bearer {ALICE}"})
    error = reply.json()["error"]
    assert reply.status_code == 400 and error["param"] == param and error["type"] == "invalid_request_error", \
        reply.text


def test_reasoning_is_accepted(client):
    response = client.responses.create(model=MODEL, input=ASK, reasoning={"effort": "low"}, max_output_tokens=2)
    assert response.reasoning.effort == "low"


def test_echoed_text_that_utf8_cannot_carry_and_ids_no_response_has_are_refused_at_once(server):
    headers = {"Authorization": f"Bearer {ALICE}", "content-type": "application/json"}
    for field, value in (("user", "a \ud800"), ("instructions", "\udc00"),
                         ("tools", [{**WEATHER, "description": "\ud800"}])):
        # NOTE: as Python's json writes it: a lone surrogate as a \u escape, as a client may
        body = json.dumps({"model": MODEL, "input": "hi", "max_output_tokens": 2, field: value})
        reply = httpx.post(f"{server.url}/v1/responses", content=body, headers=headers, timeout=30)
        assert reply.status_code == 400 and reply.json()["error"]["param"] == field, reply.text
    for previous in ("resp_" + "0" * 5000, "resp_\ud800"):
        body = json.dumps({"model": MODEL, "input": "hi", "previous_response_id": previous})
        reply = httpx.post(f"{server.url}/v1/responses", content=body, headers=headers, timeout=30)
        assert reply.status_code == 404 and reply.json()["error"]["code"] == "response_not_found"
    assert httpx.get(f"{server.url}/v1/responses/{'x' * 3000}", headers=headers, timeout=10).status_code == 404
