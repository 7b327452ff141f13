"""The served model name is the model argument as given, as vLLM and SGLang name it: `bastion serve
models/m` (a relative path, from the server's working directory) lists "models/m" in /v1/models
and answers under it; "m", the folder's name (bastion's name before), is accepted too, as an
alias that is not listed. Key and JWT model allowlists hold with either spelling: a key limited
to "m" or to "models/m" may use the model under both; a key limited to another name may not.
One server for the module; the demo model in its own folder."""
from __future__ import annotations

import time

import httpx
import jwt
import openai
import pytest
from audit_log import audit_lines
from server_process import ServerProcess

from bastion.model.demo import write_demo_model

GIVEN = "models/m"
KEYS = {"any": "key-any-0123456789abcdef", "short": "key-short-0123456789abcdef",
        "long": "key-long-0123456789abcdef", "other": "key-other-0123456789abcdef"}
JWT_SECRET = "served-name-jwt-secret-" + "s" * 32


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("served-name")
    write_demo_model(root / GIVEN)
    models = {"any": None, "short": ["m"], "long": [GIVEN], "other": ["other"]}
    (root / "keys.toml").write_text("".join(
        f'[keys.{name}]\nkey = "{KEYS[name]}"\nscopes = ["inference"]\n'
        + (f"models = {models[name]!r}\n".replace("'", '"') if models[name] else "") for name in KEYS))
    (root / "keys.toml").chmod(0o600)
    (root / "jwt.secret").write_text(JWT_SECRET)
    proc = ServerProcess(GIVEN, "--dtype", "float32", "--api-key-file", "keys.toml", "--jwt-secret-file",
                         "jwt.secret", "--audit-log", "audit.log", cwd=str(root))
    proc.root = root
    yield proc
    proc.kill()


def sdk(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def complete(server, key: str, model: str) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": model, "prompt": "Once", "max_tokens": 2}, timeout=60)


def test_models_lists_the_path_as_given_once(server):
    assert [m.id for m in sdk(server, KEYS["any"]).models.list().data] == [GIVEN]


def test_requests_with_the_path_and_with_the_folders_name_are_answered_under_the_path(server):
    client = sdk(server, KEYS["any"])
    for model in (GIVEN, "m"):
        reply = client.completions.create(model=model, prompt="Once upon a time", max_tokens=2)
        assert reply.model == GIVEN and reply.usage.completion_tokens == 2
        chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=2)
        assert chat.model == GIVEN and chat.choices[0].message.content is not None
    r = httpx.post(f"{server.url}/generate", headers={"Authorization": f"Bearer {KEYS['any']}"},
                   json={"model": "m", "text": "Once", "sampling_params": {"max_new_tokens": 2}}, timeout=60)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("model", ["other", "/models/m", "models/m/", "M"])
def test_another_name_is_404_in_openais_error_shape(server, model):
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(server, KEYS["any"]).completions.create(model=model, prompt="Once", max_tokens=1)
    assert caught.value.status_code == 404
    error = complete(server, KEYS["any"], model).json()["error"]  # OpenAI's shape, read as sent
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "model_not_found" and error["param"] == "model" and model in error["message"]


@pytest.mark.parametrize("key", ["short", "long"])
def test_a_key_limited_to_either_spelling_uses_both_and_sees_the_model_listed(server, key):
    assert [complete(server, KEYS[key], model).status_code for model in (GIVEN, "m")] == [200, 200]
    assert [m.id for m in sdk(server, KEYS[key]).models.list().data] == [GIVEN]


def test_a_key_limited_to_another_name_may_use_neither_spelling(server):
    for model in (GIVEN, "m"):
        r = complete(server, KEYS["other"], model)
        assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed", r.text
    assert sdk(server, KEYS["other"]).models.list().data == []


@pytest.mark.parametrize("models, status", [(["m"], 200), ([GIVEN], 200), (["other"], 403)])
def test_jwt_model_claims_hold_with_either_spelling(server, models, status):
    now = int(time.time())
    token = jwt.encode({"sub": "svc", "exp": now + 300, "scope": "inference", "models": models},
                       JWT_SECRET, algorithm="HS256")
    assert [complete(server, token, model).status_code for model in (GIVEN, "m")] == [status, status]


def test_the_audit_log_names_the_served_name_whichever_spelling_was_sent(server):
    assert complete(server, KEYS["short"], "m").status_code == 200
    lines = audit_lines(server.root / "audit.log",
                        lambda ls: any(line["principal"] == "short" and line["status"] == 200 for line in ls))
    mine = [line for line in lines if line["principal"] == "short" and line["path"] == "/v1/completions"]
    assert mine and {line["model"] for line in mine} == {GIVEN}
