"""Without a working C++ compiler the kernels are unavailable: the model still loads and runs on
torch's kernels (oneDNN's prepacked GEMM, eager decode steps) and the log says why."""
from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from bastion.config.engine import EngineConfig
from bastion.engine.core import EngineCore
from bastion.sampling_params import SamplingParams
engine = EngineCore(EngineConfig.from_kwargs(sys.argv[1], dtype="bfloat16", num_kv_blocks=16))
model = engine.runner.model
print(sorted({m.kernel.name for m in model.modules() if getattr(m, "kernel", None)}), model.fused_decoder)
engine.add_request("r", [5, 6, 7], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
tokens = []
while engine.has_unfinished:
    for out in engine.step():
        tokens += out.new_token_ids
print(len(tokens))
"""


def test_no_compiler_means_torch_kernels(demo_model, tmp_path):
    env = dict(os.environ, CXX="/bin/false", BASTION_KERNEL_CACHE=str(tmp_path / "kernels"))
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(demo_model)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    kernels, tokens = done.stdout.splitlines()[-2:]
    assert kernels == "['onednn-packed'] None" and tokens == "4"
    assert "bastion's CPU kernels could not be built" in done.stderr
    assert "decode steps run eagerly: layer layers.0.self_attn.qkv_proj runs the onednn-packed kernel" in done.stderr


def test_a_library_in_a_folder_others_may_write_is_not_loaded(tmp_path, monkeypatch):
    import pytest

    from bastion.model.cpu_kernels import build

    root = tmp_path / "kernels"
    monkeypatch.setenv(build.CACHE_ENV, str(root))
    name = f"bastion_cpu_kernels_{build._build_key(build.Path(build.__file__).with_name('csrc'))}"
    planted = root / name
    planted.mkdir(parents=True)
    (planted / f"{name}.so").write_bytes(b"not a library")
    planted.chmod(0o777)
    with pytest.raises(build.KernelsUnavailable, match="writable by others"):
        build._load()
    planted.chmod(0o700)
    root.chmod(0o777)
    with pytest.raises(build.KernelsUnavailable, match="writable by others"):
        build._load()
