"""`bastion serve model.gguf`: the real SmolLM2-135M-Instruct Q4_1 GGUF served as it is (its Q4_1
layers as Int4Weights, its tokenizer and ChatML template from the file), asked through the
openai SDK under the path as given (the file's name is accepted too)."""
from __future__ import annotations

import pytest

import structured_cases
from server_process import ServerProcess

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(smollm2_gguf_file):
    proc = ServerProcess(str(smollm2_gguf_file), "--dtype", "float32", "--max-model-len", "512")
    yield proc
    proc.kill()


def test_a_chat_completion_answers_under_the_path_as_given(server, smollm2_gguf_file):
    client = structured_cases.openai_client(server)
    assert [m.id for m in client.models.list().data] == [str(smollm2_gguf_file)]
    reply = client.chat.completions.create(model=smollm2_gguf_file.name, messages=QUESTION,
                                           max_tokens=24, temperature=0)
    assert reply.model == str(smollm2_gguf_file)  # asked by the file's name, the alias
    text = reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop" and "Paris" in text, text
    # the template's default system prompt came from the file: ~30 prompt tokens, not 8
    assert reply.usage.prompt_tokens > 25, reply.usage
