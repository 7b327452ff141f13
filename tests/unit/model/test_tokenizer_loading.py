"""`load_tokenizer` takes a shortcut for folders whose tokenizer is the plain fast class (no
AutoTokenizer, so no torch import in the API server): it must be the very tokenizer
AutoTokenizer gives. Other classes still go through AutoTokenizer."""
from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from bastion.model import tokenizer as tokenizer_module
from bastion.model.tokenizer import load_tokenizer

TEXTS = ["Once upon a time", "Hello, <|begin_of_text|> world!\n\nx", "ünïcødé 😀 tabs\tand  spaces"]
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


@pytest.mark.parametrize("name", ["demo", "smollm2"])
def test_the_plain_fast_class_gives_autotokenizers_tokenizer(name, request):
    folder = request.getfixturevalue("smollm2_checkpoint") if name == "smollm2" else request.getfixturevalue(
        "model_paths")["demo"]
    named = json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"]
    assert named in ("PreTrainedTokenizerFast", "TokenizersBackend")
    assert tokenizer_module._tokenizer_class(folder) is not AutoTokenizer
    ours, auto = load_tokenizer(folder), AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    assert type(ours) is type(auto)
    assert [ours.encode(t) for t in TEXTS] == [auto.encode(t) for t in TEXTS]
    assert ours.get_vocab() == auto.get_vocab() and ours.all_special_ids == auto.all_special_ids
    assert (ours.bos_token_id, ours.eos_token_id) == (auto.bos_token_id, auto.eos_token_id)
    assert (ours.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
            == auto.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True))
    ids = ours.encode(TEXTS[2])
    assert ours.decode(ids) == auto.decode(ids)


def test_other_tokenizer_classes_go_through_autotokenizer(tmp_path):
    for named in ("LlamaTokenizerFast", "Qwen2Tokenizer", None):
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": named}))
        assert tokenizer_module._tokenizer_class(tmp_path) is AutoTokenizer
    (tmp_path / "tokenizer_config.json").unlink()
    assert tokenizer_module._tokenizer_class(tmp_path) is AutoTokenizer
