"""What bastion's child processes get from its environment, and which variables are secrets.

Two rules, on purpose not the same:

* A process started on this host (an engine, an API server, a supervised rank, a Ray actor's
  engine) gets `child_environment`: ours without `WITHHELD_FROM_CHILDREN` (`BASTION_API_KEY`:
  keys reach children as digests inside their spec), plus its log level. Everything else stays,
  even a variable whose name looks secret (HF_TOKEN): it is the same user on the same host.
* Nothing whose name says it holds a secret (`is_secret`: a KEY, TOKEN, PASSWORD, ... word) leaves
  this host through Ray: actor environments drop such variables (ray/env.py), and `secrets_hidden`
  takes them out of os.environ while a local Ray cluster starts (its processes, and so every
  actor, copy it), keeping Ray's own `RAY_*` settings (`RAY_AUTH_TOKEN` is how they authenticate).
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from typing import Iterator

from bastion.security.keys import ENV_VAR as API_KEY_ENV_VAR

WITHHELD_FROM_CHILDREN = frozenset({API_KEY_ENV_VAR})

_SECRET_WORDS = {"KEY", "APIKEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL",
                 "CREDENTIALS", "AUTH", "PRIVATE"}


def child_environment(log_level: str) -> dict[str, str]:
    """The launcher's environment without its secrets (keys reach children as digests in the spec)."""
    env = {k: v for k, v in os.environ.items() if k not in WITHHELD_FROM_CHILDREN}
    env["BASTION_LOG_LEVEL"] = log_level
    return env


def is_secret(name: str) -> bool:
    """Whether a variable's name says it holds a secret (HF_TOKEN, BASTION_API_KEY, ...)."""
    return any(word in _SECRET_WORDS for word in re.split(r"[_\W]+", name.upper()))


@contextmanager
def secrets_hidden() -> Iterator[None]:
    """os.environ without bastion's and other secrets (but with every `RAY_*`) inside the block;
    as it was after it."""
    saved = {k: v for k, v in os.environ.items()
             if (k in WITHHELD_FROM_CHILDREN or is_secret(k)) and not k.startswith("RAY_")}
    for name in saved:
        del os.environ[name]
    try:
        yield
    finally:
        os.environ.update(saved)
