"""`bastion serve --quantization int8|int4`: the demo model answers through the openai SDK
with the tokens the offline engine gives for the same quantization."""
from __future__ import annotations

import subprocess
import sys

import openai
import pytest

from bastion.engine.llm import LLM
from bastion.sampling_params import SamplingParams
from server_process import ServerProcess

PROMPTS = ["The function returns", "import os\n"]


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_quantized_server_answers_like_offline(method, demo_model):
    offline = LLM(demo_model, quantization=method)
    want = [o.outputs[0].text for o in offline.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=16))]
    server = ServerProcess("--quantization", method, "--served-model-name", "demo")
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        for prompt, text in zip(PROMPTS, want):
            got = client.completions.create(model="demo", prompt=prompt, max_tokens=16, temperature=0)
            assert got.choices[0].text == text
        chat = client.chat.completions.create(model="demo", max_tokens=8,
                                              messages=[{"role": "user", "content": "What is a list?"}])
        assert chat.choices[0].message.content
    finally:
        server.kill()


def test_unknown_quantization_is_a_usage_error():
    done = subprocess.run([sys.executable, "-m", "bastion.cli", "serve", "--quantization", "int3"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--quantization" in done.stderr and "int3" in done.stderr
    assert "Traceback" not in done.stderr
