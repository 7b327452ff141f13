"""ServedNames: which `model` values a request may name, and which of them a caller may use.

The served names (`--served-model-name`, default the model argument as given, as vLLM and
SGLang name it: `bastion serve /models/m` serves "/models/m") are listed by `/v1/models`; the
aliases (by default the folder's or file's last part, "m", what bastion answered before) are
accepted in requests as the first served name, never listed. Every spelling names the one
model, so a key or JWT whose `models` lists any spelling of it may use it under every spelling;
answers and the audit log carry the served name the spelling stands for.
"""
from __future__ import annotations

from typing import Callable


class ServedNames:
    """The served names (listed) and the aliases of the first one (accepted, not listed)."""

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
