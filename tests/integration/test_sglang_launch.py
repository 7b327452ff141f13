"""The launch line users copy from SGLang's guides, run as is: `bastion serve --model-path M --host
127.0.0.1 --port P --api-key-file keys.toml --log-level warning --dp 2 --ssl-key-file K
--ssl-cert-file C`, with a real key file, real certificates made here and the demo model in its
own folder; the openai SDK talks to it over verified TLS with the key."""
from __future__ import annotations

import ssl

import httpx
import openai
import pytest
from certs import CertAuthority

from bastion.bench.harness import SERVING, ServeProcess
from bastion.model.demo import write_demo_model

KEY = "sglang-style-key-0123456789abcdef"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sglang-launch")
    model = write_demo_model(folder / "m")
    keys = folder / "keys.toml"
    keys.write_text(f'[keys.ops]\nkey = "{KEY}"\nscopes = ["inference", "metrics"]\n')
    ca = CertAuthority(folder / "pki")
    pair = ca.issue("server")
    # NOTE: exactly the SGLang-style line; --port 0 where the guide says 30000 (the ready line tells)
    proc = ServeProcess(["--model-path", str(model), "--host", "127.0.0.1", "--port", "0",
                         "--api-key-file", str(keys), "--log-level", "warning", "--dp", "2",
                         "--ssl-key-file", str(pair.key), "--ssl-cert-file", str(pair.cert)], SERVING)
    try:
        url = proc.wait_ready(240)["url"]
        yield url, ssl.create_default_context(cafile=str(ca.path)), str(model)
    finally:
        proc.stop()


def client(url: str, context: ssl.SSLContext, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0,
                         http_client=httpx.Client(verify=context, timeout=60))


def test_the_sglang_style_line_serves_over_verified_tls_with_the_key(server):
    url, context, model = server
    assert url.startswith("https://127.0.0.1:")
    sdk = client(url, context)
    assert [m.id for m in sdk.models.list().data] == [model]  # --model-path as given, as SGLang
    # NOTE: "m", the folder's name, is accepted too (bastion's name before)
    for _ in range(4):
        reply = sdk.completions.create(model="m", prompt="Once upon a time", max_tokens=4,
                                       extra_body={"ignore_eos": True})
        assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 4
    chat = sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    assert chat.choices[0].message.content is not None
    metrics = httpx.get(f"{url}/metrics", verify=context, headers={"authorization": f"Bearer {KEY}"}).text
    assert 'bastion_engine_up{rank="0"} 1.0' in metrics and 'bastion_engine_up{rank="1"} 1.0' in metrics  # --dp 2


def test_the_key_is_required_and_the_certificate_verified(server):
    url, context, _ = server
    with pytest.raises(openai.AuthenticationError):
        client(url, context, key="not-the-key-0000000000000").models.list()
    with pytest.raises(openai.APIConnectionError):  # a client that trusts nothing of ours
        client(url, ssl.create_default_context()).models.list()
