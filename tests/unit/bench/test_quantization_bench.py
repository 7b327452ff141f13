"""`bastion bench quantization` on the demo model: the JSON's fields and their sense."""
from __future__ import annotations

import json

from bastion.bench.quality.text import passage_text
from bastion.cli import main


def test_passage_is_the_shipped_text():
    text = passage_text()
    assert text.startswith("IN CONGRESS, July 4, 1776.")
    assert "our Lives, our Fortunes and our sacred Honor." in text
    assert text.rstrip().endswith("shall not perish from the earth.")


def test_bench_writes_its_table_and_json(tmp_path, capsys):
    out = tmp_path / "q.json"
    assert main(["bench", "quantization", "--variants", "bf16", "int8", "int4",
                 "--max-tokens", "4", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    ref, int8, int4 = result["variants"]
    assert result["passage_tokens"] == 2048  # the demo model's context cuts the passage
    assert ref["argmax_agreement"] == 1.0 and ref["generation_identical"] == len(result["prompts"])
    assert ref["weight_bytes_per_token"] > int8["weight_bytes_per_token"] > int4["weight_bytes_per_token"]
    assert 0.5 < int4["argmax_agreement"] < 1.0        # int4 changes some choices, not most
    assert abs(int8["perplexity_change"]) < 0.05
    assert "int4" in capsys.readouterr().out
