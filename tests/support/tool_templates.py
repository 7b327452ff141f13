"""A Hermes/Qwen-style chat template that renders tools, assistant tool calls and tool results
(with the demo model's header tokens, so the demo model reads it as it reads its own), and the
demo model's files with that template instead of its own (which ignores tools)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from bastion.model.demo import DEMO_MODEL_DIR

HERMES_STYLE_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if tools %}<|start_header_id|>system<|end_header_id|>\n\n# Tools\n\nYou may call functions."
    " Signatures:\n<tools>{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools>\n"
    "Call one as <tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n"
    "</tool_call><|eot_id|>{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' and message.tool_calls %}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{{ message.content or '' }}"
    "{%- for call in message.tool_calls %}\n<tool_call>\n{\"name\": \"{{ call.function.name }}\", "
    "\"arguments\": {{ call.function.arguments | tojson }}}\n</tool_call>{%- endfor %}<|eot_id|>"
    "{%- elif message.role == 'tool' %}"
    "<|start_header_id|>user<|end_header_id|>\n\n<tool_response>\n{{ message.content }}\n</tool_response><|eot_id|>"
    "{%- else %}"
    "<|start_header_id|>{{ message.role }}<|end_header_id|>\n\n{{ message.content | trim }}<|eot_id|>"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{%- endif %}"
)


def model_with_template(out: Path, template: str) -> Path:
    """The demo model's files in `out` with `template` as the chat template."""
    out.mkdir(parents=True, exist_ok=True)
    for src in DEMO_MODEL_DIR.iterdir():
        if src.is_file():
            shutil.copy2(src, out / src.name)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = template
    config_path.write_text(json.dumps(config))
    return out
