"""Bad GGUF files get a ModelLoadError that names the file and says what is wrong, and
`bastion serve bad.gguf` exits 2 with that message before starting anything."""
from __future__ import annotations

import pytest

from bastion.cli import main
from bastion.model.arch import ModelLoadError, read_arch_config
from bastion.model.gguf.weights import check_gguf
from gguf_files import write_gguf


@pytest.fixture(scope="module")
def good(demo_model, tmp_path_factory):
    return write_gguf(demo_model, tmp_path_factory.mktemp("gguf") / "demo.gguf", "F32")


def _type_offset(data: bytes, name: str) -> int:
    """Where tensor `name`'s type id sits in the tensor table (after its name and dimensions)."""
    raw = name.encode()
    at = data.index(len(raw).to_bytes(8, "little") + raw) + 8 + len(raw)
    dims = int.from_bytes(data[at:at + 4], "little")
    return at + 4 + 8 * dims


def _patched(good, tmp_path, type_id: int):
    data = bytearray(good.read_bytes())
    at = _type_offset(bytes(data), "output_norm.weight")
    assert int.from_bytes(data[at:at + 4], "little") == 0  # F32
    data[at:at + 4] = type_id.to_bytes(4, "little")
    path = tmp_path / "patched.gguf"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("keep", [0.001, 0.5, 0.999])
def test_truncated_file(good, tmp_path, keep):
    data = good.read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(ModelLoadError, match=f"{path}: not a readable GGUF file, truncated or corrupt"):
        check_gguf(path)


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_text("{}")
    with pytest.raises(ModelLoadError, match=r"model.gguf: not a GGUF file \(it starts with b'\{\}', not b'GGUF'\)"):
        read_arch_config(path)
    other = tmp_path / "weights.bin"
    other.write_bytes(b"\0" * 16)
    with pytest.raises(ModelLoadError, match="is a file but not a GGUF file"):
        read_arch_config(other)


def test_unknown_tensor_type(good, tmp_path):
    with pytest.raises(ModelLoadError, match="patched.gguf: a tensor has type id 99, which this gguf package "
                                             "does not know"):
        check_gguf(_patched(good, tmp_path, 99))


def test_known_type_bastion_does_not_read(good, tmp_path):
    with pytest.raises(ModelLoadError, match="tensor output_norm.weight has type I32, which bastion does not "
                                             "read; supported: Q4_0, Q4_1, F32, F16, BF16, Q8_0"):
        check_gguf(_patched(good, tmp_path, 26))  # I32: same size, so the file still parses


def test_unsupported_architecture_names_the_supported_ones(demo_model, tmp_path):
    path = write_gguf(demo_model, tmp_path / "g.gguf", "F32", arch="gemma2")
    with pytest.raises(ModelLoadError, match="g.gguf: unsupported GGUF architecture 'gemma2'; "
                                             "supported: llama, qwen2, qwen3"):
        read_arch_config(path)


def test_missing_tensor_is_named_as_gguf_names_it(demo_model, tmp_path):
    path = write_gguf(demo_model, tmp_path / "m.gguf", "F32", edit=lambda t: t.pop("blk.2.attn_k.weight"))
    with pytest.raises(ModelLoadError, match=r"tensors missing from checkpoint: layers.2.self_attn.qkv_proj.weight "
                                             r"\(has parts \[0, 2\] of \[0, 1, 2\]: half-merged\) \[blk.2.attn_k.weight\]"):
        check_gguf(path)


def test_unexpected_tensor(demo_model, tmp_path):
    import numpy as np
    path = write_gguf(demo_model, tmp_path / "u.gguf", "F32",
                      edit=lambda t: t.update({"blk.0.mystery.weight": np.zeros(4, np.float32)}))
    with pytest.raises(ModelLoadError, match="unexpected tensors in checkpoint: blk.0.mystery.weight"):
        check_gguf(path)


def test_shape_mismatch(demo_model, tmp_path):
    import numpy as np
    path = write_gguf(demo_model, tmp_path / "s.gguf", "F32",
                      edit=lambda t: t.update({"output_norm.weight": np.ones(3, np.float32)}))
    with pytest.raises(ModelLoadError, match=r"s.gguf: tensor output_norm.weight has shape \(3,\), expected "
                                             r"\(256,\) from the GGUF metadata"):
        check_gguf(path)


def test_serve_refuses_a_bad_gguf_with_exit_2_and_no_traceback(demo_model, tmp_path, capsys):
    path = write_gguf(demo_model, tmp_path / "g.gguf", "F32", arch="gemma2")
    assert main(["serve", str(path), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "bastion serve: error:" in err and "unsupported GGUF architecture 'gemma2'" in err
    assert "Traceback" not in err


def test_served_name_of_a_gguf_is_its_path_and_its_file_name_an_alias(good):
    from bastion.args.serve import serve_config
    from bastion.cli import build_parser

    config = serve_config(build_parser().parse_args(["serve", str(good)]))
    assert config.server.served_model_names == (str(good),) and config.server.model_aliases == ("demo.gguf",)
