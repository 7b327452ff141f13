"""The HTTP front end's config: where it listens, what it calls the model, and its guards."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from bastion.config.engine import StructuredOutputConfig
from bastion.config.responses import ResponseStoreConfig

# The parsers of `tool_choice: "auto"` answers (server/tools/choose.py), vLLM's names.
TOOL_CALL_PARSERS = ("hermes", "llama3_json", "mistral")
# The readers of a model's thinking (server/reasoning/): vLLM's names; auto: the template's.
REASONING_PARSERS = ("auto", "none", "qwen3", "deepseek_r1")


@dataclass(frozen=True)
class ServerConfig:
    """The HTTP front end: where it listens, what it calls the model, and its guards."""

    host: str = "127.0.0.1"
    port: int = 8000
    served_model_names: tuple[str, ...] = ()
    model_aliases: tuple[str, ...] = ()  # also accepted for the first served name, not listed
    max_request_body_bytes: int = 4 * 2**20
    max_queued_requests: int | None = None
    shutdown_timeout: float = 30.0
    prefix_affinity_tokens: int = 2048
    log_level: str = "info"
    http_header_timeout: float = 10.0
    max_request_header_bytes: int = 32 * 2**10
    max_connections: int = 4096
    max_batched_prompts: int = 128
    max_logprobs: int = 20  # the top alternatives a request may ask per prompt position (vLLM's)
    structured: StructuredOutputConfig = field(default_factory=StructuredOutputConfig)  # the engines' too
    tool_call_parser: str | None = None  # None: chosen from the chat template
    reasoning_parser: str = "auto"  # auto: chosen from the chat template's markers; none: off
    responses_store: ResponseStoreConfig = field(default_factory=ResponseStoreConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port must be in [0, 65535], got {self.port}")
        if not self.served_model_names:
            raise ValueError("--served-model-name needs at least one name")
        if self.max_request_body_bytes < 1024:
            raise ValueError(f"--max-request-body-bytes must be at least 1024, got {self.max_request_body_bytes}")
        if self.max_queued_requests is not None and self.max_queued_requests < 0:
            raise ValueError(f"--max-queued-requests must be non-negative, got {self.max_queued_requests}")
        if not self.http_header_timeout > 0:
            raise ValueError(f"--http-header-timeout must be positive, got {self.http_header_timeout}")
        if self.max_request_header_bytes < 1024:
            raise ValueError(f"--max-request-header-bytes must be at least 1024, got {self.max_request_header_bytes}")
        if self.max_connections < 1:
            raise ValueError(f"--max-connections must be at least 1, got {self.max_connections}")
        if self.max_batched_prompts < 1:
            raise ValueError(f"--max-batched-prompts must be at least 1, got {self.max_batched_prompts}")
        if self.max_logprobs < 0:
            raise ValueError(f"--max-logprobs must be non-negative, got {self.max_logprobs}")
        if self.tool_call_parser is not None and self.tool_call_parser not in TOOL_CALL_PARSERS:
            raise ValueError(f"--tool-call-parser must be one of {', '.join(TOOL_CALL_PARSERS)}, "
                             f"got {self.tool_call_parser!r}")
        if self.reasoning_parser not in REASONING_PARSERS:
            raise ValueError(f"--reasoning-parser must be one of {', '.join(REASONING_PARSERS)}, "
                             f"got {self.reasoning_parser!r}")
        if self.shutdown_timeout < 0:
            raise ValueError(f"--shutdown-timeout must be non-negative, got {self.shutdown_timeout}")


class ServedNames:
    """Which `model` values a request may name, and which of them a caller may use.

    The served names (`--served-model-name`, default the model argument as given, as vLLM and
    SGLang name it: `bastion serve /models/m` serves "/models/m") are listed by `/v1/models`; the
    aliases (by default the folder's or file's last part, "m", what bastion answered before) are
    accepted in requests as the first served name, never listed. Every spelling names the one
    model, so a key or JWT whose `models` lists any spelling of it may use it under every spelling;
    answers and the audit log carry the served name the spelling stands for.
    """

    def __init__(self, names: tuple[str, ...], aliases: tuple[str, ...] = ()) -> None:
        self.names = names
        self.aliases = tuple(a for a in aliases if a not in names)

    def resolve(self, name: str) -> str | None:
        """The served name `name` stands for; None when the server does not serve it."""
        if name in self.names:
            return name
        return self.names[0] if name in self.aliases else None

    def spellings(self, served: str) -> tuple[str, ...]:
        """Every name that stands for the served name `served` (itself first)."""
        return (served, *self.aliases) if served == self.names[0] else (served,)

    def allowed(self, served: str, may_use: Callable[[str], bool]) -> bool:
        """Whether a caller whose model allowlist is `may_use` may use `served`: it lists one of
        its spellings (or has no allowlist)."""
        return any(may_use(name) for name in self.spellings(served))

    def listed(self, may_use: Callable[[str], bool]) -> list[str]:
        """The served names such a caller may use, as `/v1/models` lists them."""
        return [name for name in self.names if self.allowed(name, may_use)]
