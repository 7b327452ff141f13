"""Shared fixtures: model folders (the trained demo model, tiny random ones) and references."""
from __future__ import annotations

import os
import sys
from pathlib import Path

# NOTE: OpenMP threads that wait for work sleep instead of spinning, in this process and every
# server it starts (set before torch loads libgomp). `make test` runs two pytest workers on two
# cores; two engines whose idle threads spin for the whole core slow each other down many times
# over (a tool-call test: 1.4 s alone, 27 s beside another file's server). Results are the same.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "support"))

# NOTE: engines built inside the test process (not the servers tests start) size their default
# KV pool at 512 MiB instead of production's 4 GiB: an engine keeps freed memory in its process
# (engine/cpu_memory.py), so a worker that builds hundreds of engines grew to 10 GiB and, beside
# another worker and its servers, ran a 24 GiB machine out of memory. Tests that need a size say so.
TEST_CPU_KV_MEMORY = 512 * 2**20

import bastion.engine.runner  # noqa: E402
from bastion.model.demo import DEMO_MODEL_DIR  # noqa: E402
from real_checkpoint import smollm2_checkpoint, smollm2_gguf_file  # noqa: E402,F401 (session fixtures)
from server_process import ServerProcess  # noqa: E402
from tiny_models import make_tiny_model  # noqa: E402

bastion.engine.runner.DEFAULT_CPU_KV_MEMORY = TEST_CPU_KV_MEMORY


@pytest.fixture(scope="session")
def demo_model() -> Path:
    return DEMO_MODEL_DIR


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "qwen3", "qwen3")


@pytest.fixture(scope="session")
def model_paths(demo_model, tiny_qwen3) -> dict[str, Path]:
    return {"demo": demo_model, "qwen3": tiny_qwen3}


class HFReference:
    """Greedy continuations from transformers, one prompt at a time (no padding), memoised."""

    def __init__(self) -> None:
        self._models: dict[Path, torch.nn.Module] = {}
        self._memo: dict[tuple, list[int]] = {}

    def greedy(self, path: Path, prompt: list[int], max_new_tokens: int) -> list[int]:
        key = (path, tuple(prompt), max_new_tokens)
        if key not in self._memo:
            from transformers import AutoModelForCausalLM

            if path not in self._models:
                self._models[path] = AutoModelForCausalLM.from_pretrained(
                    path, dtype=torch.float32).eval()
            with torch.inference_mode():
                out = self._models[path].generate(torch.tensor([prompt]), do_sample=False,
                                                  max_new_tokens=max_new_tokens,
                                                  attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
            self._memo[key] = out[0, len(prompt):].tolist()
        return self._memo[key]


@pytest.fixture(scope="session")
def hf_reference() -> HFReference:
    return HFReference()


@pytest.fixture(scope="session")
def shared_server():
    """The API tests' server: the demo model as "demo" and "bastion-demo", -dp 2, 2 API servers."""
    # NOTE: --enforce-eager: tests here abort or watch requests mid-generation, and the fused
    # decode step runs the demo model's whole output before a client's disconnect is noticed
    proc = ServerProcess("-dp", "2", "--api-server-count", "2", "--dtype", "float32",
                         "--served-model-name", "demo", "bastion-demo", "--enforce-eager")
    yield proc
    proc.kill()

