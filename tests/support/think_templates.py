"""A Qwen3-style thinking chat template on the demo model's files, with `<think>` and `</think>`
as tokens of its vocabulary (each takes the id of a token it renames, as Qwen3's tokenizer has
them as added, non-special tokens), so the demo model's own greedy answer is thinking, then
`</think>`, then an answer: `</think>` takes the id of a token the model writes a few tokens
into its answer to the test's question.

The template opens the think block in the prompt (`<think>\\n`, as Qwen3's thinking templates and
DeepSeek-R1's do), or, with `enable_thinking: false`, closes it there (`<think>\\n\\n</think>\\n\\n`,
as Qwen3's), using the demo model's header tokens."""
from __future__ import annotations

import json
from pathlib import Path

from tool_templates import model_with_template

QWEN3_STYLE_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages %}"
    "<|start_header_id|>{{ message.role }}<|end_header_id|>\n\n{{ message.content | trim }}<|eot_id|>"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
    "{%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{%- endif %}"
)
THINK_ID = 4095  # a rare token ("Ġbreaks") becomes <think>
FIRST_FREE_POSITION = 4  # </think> is the first token from here on that the answer has not had


def _merge_parts(spec: dict) -> set[str]:
    return {part for m in spec["model"]["merges"] for part in (m if isinstance(m, list) else m.split(" "))}


def renamable(model_dir: Path) -> set[int]:
    """Ids whose piece no merge builds on (renaming one leaves the rest of the vocabulary whole)."""
    spec = json.loads((model_dir / "tokenizer.json").read_text())
    parts = _merge_parts(spec)
    return {i for piece, i in spec["model"]["vocab"].items() if piece not in parts and len(piece) > 1}


def rename_token(model_dir: Path, token_id: int, content: str) -> None:
    """Token `token_id` of the demo tokenizer becomes the added, non-special token `content`."""
    path = model_dir / "tokenizer.json"
    spec = json.loads(path.read_text())
    bpe = spec["model"]
    old = next(piece for piece, i in bpe["vocab"].items() if i == token_id)
    del bpe["vocab"][old]
    bpe["vocab"][content] = token_id
    bpe["merges"] = [m for m in bpe["merges"] if "".join(m if isinstance(m, list) else m.split(" ")) != old]
    spec["added_tokens"].append({"id": token_id, "content": content, "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False, "special": False})
    path.write_text(json.dumps(spec))


def thinking_model(out: Path, ask: list[dict], greedy) -> tuple[Path, str]:
    """The model folder, and the text of the token that became `</think>`. `greedy(path,
    prompt_ids, n)` gives the model's greedy continuation (tests/conftest.py's hf_reference)."""
    from transformers import AutoTokenizer

    model_dir = model_with_template(out, QWEN3_STYLE_TEMPLATE)
    rename_token(model_dir, THINK_ID, "<think>")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt = tokenizer.apply_chat_template(ask, add_generation_prompt=True, tokenize=True, return_dict=False)
    answer = greedy(model_dir, list(prompt), 40)
    free = renamable(model_dir)
    end_id = next(t for i, t in enumerate(answer) if i >= FIRST_FREE_POSITION
                  and t not in answer[:i] and t not in prompt and t in free)
    renamed = tokenizer.decode([end_id])
    rename_token(model_dir, end_id, "</think>")
    return model_dir, renamed
