"""Named tensors -> a model's parameters, whatever the checkpoint format (safetensors or GGUF).

`empty_model` builds the model without initialising weights; `ParamFill` copies each tensor into
its parameter (or one shard of a merged qkv/gate_up parameter) with a shape check, and at the end
says which parameters no tensor filled."""
from __future__ import annotations

from typing import Callable

import torch

from bastion.model.arch_config import ArchConfig, ModelLoadError
from bastion.model.llama import LlamaModel

_MERGED_PARTS = {"qkv_proj": {0, 1, 2}, "gate_up_proj": {0, 1}}


def empty_model(cfg: ArchConfig, dtype: torch.dtype, device: torch.device, max_positions: int,
                head_rows: slice | None = None) -> LlamaModel:
    """The model on `device` with uninitialised parameters and its buffers (rotary tables) made;
    `head_rows`: the rows of a vocabulary-parallel LM head."""
    with torch.device("meta"):
        model = LlamaModel(cfg, max_positions, head_rows=head_rows)
    model = model.to(dtype).to_empty(device=device)
    model.tie_lm_head()
    for module in model.modules():
        if hasattr(module, "init_buffers"):
            module.init_buffers(device)
    return model


def shard_rows(cfg: ArchConfig, param_name: str, shard: int) -> tuple[int, int]:
    """(first row, row count) of part `shard` of a merged qkv_proj or gate_up_proj."""
    if "qkv_proj" in param_name:
        sizes = [cfg.q_size, cfg.kv_size, cfg.kv_size]
    else:
        sizes = [cfg.intermediate_size, cfg.intermediate_size]
    return sum(sizes[:shard]), sizes[shard]


class ParamFill:
    """Fills a model's parameters from named tensors; every error names `source` (the file or folder).

    `config_name` says where the expected shapes come from (config.json, GGUF metadata);
    `describe(pname, shard)` gives the checkpoint's own name of a parameter for messages."""

    def __init__(self, model: torch.nn.Module, cfg: ArchConfig, source: str, config_name: str,
                 describe: Callable[[str, int | None], str] | None = None) -> None:
        self.params = dict(model.named_parameters())
        self.cfg, self.source, self.config_name = cfg, source, config_name
        self.describe = describe
        self.loaded: dict[str, set[int | None]] = {}
        self.unexpected: list[str] = []

    def accepts(self, pname: str, name: str) -> bool:
        """True when `pname` is a parameter of the model; else `name` is noted as unexpected."""
        if pname in self.params:
            return True
        self.unexpected.append(name)
        return False

    def expected_shape(self, pname: str, shard: int | None) -> tuple[int, ...]:
        shape = tuple(self.params[pname].shape)
        if shard is None:
            return shape
        return (shard_rows(self.cfg, pname, shard)[1],) + shape[1:]

    def check_shape(self, pname: str, shard: int | None, shape: tuple[int, ...], name: str) -> None:
        expected = self.expected_shape(pname, shard)
        if tuple(shape) != expected:
            raise ModelLoadError(f"{self.source}: tensor {name} has shape {tuple(shape)}, "
                                 f"expected {expected} from {self.config_name}")

    def copy(self, pname: str, shard: int | None, tensor: torch.Tensor, name: str) -> None:
        """Copy `tensor` (named `name` in the checkpoint) into its parameter or shard."""
        self.check_shape(pname, shard, tuple(tensor.shape), name)
        dest = self.params[pname].data
        if shard is not None:
            dest = dest.narrow(0, *shard_rows(self.cfg, pname, shard))
        with torch.no_grad():
            dest.copy_(tensor)
        self.mark(pname, shard)

    def mark(self, pname: str, shard: int | None) -> None:
        """Count `pname` (or its shard) as filled (by `copy`, or by the caller another way)."""
        self.loaded.setdefault(pname, set()).add(shard)

    def check_complete(self) -> None:
        """ModelLoadError for unexpected tensors, or parameters (or shards) nothing filled."""
        if self.unexpected:
            shown = ", ".join(self.unexpected[:5]) + (" ..." if len(self.unexpected) > 5 else "")
            raise ModelLoadError(f"{self.source}: unexpected tensors in checkpoint: {shown}")
        missing = []
        for pname in self.params:
            want = next((p for k, p in _MERGED_PARTS.items() if k in pname), {None})
            got = self.loaded.get(pname, set())
            if got == want:
                continue
            absent = ", ".join(self.describe(pname, s) for s in sorted(want - got, key=str)) \
                if self.describe else ""
            parts = "" if want == {None} else f" (has parts {sorted(got)} of {sorted(want)}: half-merged)"
            missing.append((pname + parts if got else pname) + (f" [{absent}]" if absent else ""))
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise ModelLoadError(f"{self.source}: tensors missing from checkpoint: {shown}")
