"""The offline API (`LLM`) and the `bastion` command on the trained demo model."""
from __future__ import annotations

import subprocess
import sys

import pytest

from bastion import LLM, SamplingParams
from bastion.model.demo import DEMO_MODEL_DIR


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(num_kv_blocks=256, dtype="float32")


def test_generate_text_prompts_in_order(llm):
    prompts = ["The function returns", "A list is", "Raise an exception when"]
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=12))
    assert [o.prompt for o in outs] == prompts
    for out in outs:
        (completion,) = out.outputs
        assert completion.token_ids and len(completion.token_ids) <= 12
        assert completion.finish_reason in ("stop", "length")
        assert completion.text == llm.tokenizer.decode(completion.token_ids, skip_special_tokens=True)
    assert outs[0].prompt_token_ids[0] == llm.tokenizer.bos_token_id


def test_demo_model_writes_english_like_text(llm):
    (out,) = llm.generate("The default value of the argument", SamplingParams(temperature=0, max_tokens=40))
    words = out.outputs[0].text.split()
    assert len(words) >= 8
    common = {"the", "a", "is", "of", "to", "and", "in", "be", "if", "is", "an", "for", "this", "that"}
    assert sum(w.lower().strip(".,") in common for w in words) >= 3, out.outputs[0].text


def test_token_id_prompts_n_and_logprobs(llm):
    ids = llm.tokenizer("Return the value").input_ids
    (out,) = llm.generate([ids], SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=6, logprobs=2))
    assert out.prompt is None and out.prompt_token_ids == ids
    assert [c.index for c in out.outputs] == [0, 1, 2]
    for c in out.outputs:
        assert len(c.logprobs) == len(c.token_ids) and all(len(lp.top) == 2 for lp in c.logprobs)
        assert c.cumulative_logprob == pytest.approx(sum(lp.logprob for lp in c.logprobs))


def test_chat_uses_the_chat_template(llm):
    (out,) = llm.chat([{"role": "user", "content": "What does a function return?"}],
                      SamplingParams(temperature=0, max_tokens=10))
    text = llm.tokenizer.decode(out.prompt_token_ids)
    assert "<|start_header_id|>user<|end_header_id|>" in text
    assert text.rstrip().endswith("<|start_header_id|>assistant<|end_header_id|>")
    assert out.outputs[0].token_ids


def test_one_bad_prompt_queues_nothing(llm):
    with pytest.raises(ValueError, match="prompt is empty"):
        llm.generate(["fine prompt", ""], SamplingParams(max_tokens=3))
    assert not llm.engine.has_unfinished


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bastion.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_cli_generate_prints_a_completion():
    proc = run_cli("generate", "The function returns", "--max-tokens", "8", "--temperature", "0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("The function returns") and len(proc.stdout) > len("The function returns")


def test_cli_generate_rejects_bad_values():
    proc = run_cli("generate", "hi", "--max-tokens", "0")
    assert proc.returncode == 2 and "max_tokens must be at least 1" in proc.stderr
    proc = run_cli("generate", "hi", "--kv-cache-memory", "lots")
    assert proc.returncode == 2 and "--kv-cache-memory" in proc.stderr


def test_cli_demo_model_writes_a_loadable_folder(tmp_path):
    dest = tmp_path / "demo"
    proc = run_cli("demo-model", str(dest))
    assert proc.returncode == 0, proc.stderr
    names = {p.name for p in dest.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    again = run_cli("demo-model", str(dest))
    assert again.returncode == 2 and "config.json" in again.stderr
    (out,) = LLM(dest, num_kv_blocks=32).generate("Hello", SamplingParams(max_tokens=3))
    assert out.outputs[0].token_ids


def test_demo_files_stay_small():
    assert sum(p.stat().st_size for p in DEMO_MODEL_DIR.iterdir()) < 10 * 2**20


def test_logit_bias_forces_bans_and_is_checked_against_the_vocabulary(llm):
    prompt = "The function returns"
    (plain,) = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=6))
    first = plain.outputs[0].token_ids[0]
    (banned,) = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=6, logit_bias={first: -100}))
    assert banned.outputs[0].token_ids[0] != first
    forced = llm.tokenizer(" list", add_special_tokens=False).input_ids[-1]
    (out,) = llm.generate(prompt, SamplingParams(temperature=1.0, max_tokens=6, logit_bias={forced: 100}))
    assert out.outputs[0].token_ids == [forced] * 6
    with pytest.raises(ValueError, match="logit_bias key 999999 is outside the vocabulary"):
        llm.generate(prompt, SamplingParams(logit_bias={999999: 1.0}))
