"""How bastion starts every Python process of its own: nothing is imported from a working directory.

`python -m module` puts the current directory first on `sys.path`, so a server started from a
folder that another user can write (a shared temporary folder) would import that user's
`msgspec.py` in each child. Every child bastion starts (launch children: API servers, engines,
supervised ranks; tensor-parallel workers; grammar check workers; the bench's servers) is
started with `python_command` and `python_environment`:

* `python -P -m module` (Python 3.11's safe path): the working directory is not put on the path;
* `PYTHONPATH`: the root of the parent's own `bastion` package first, so the child runs the same
  bastion code (a checkout run with PYTHONPATH, an editable install), unless that root is a
  site-packages folder the child finds anyway (on PYTHONPATH it would come before the standard
  library); then the absolute entries of the given PYTHONPATH. Empty and relative entries are
  dropped: they resolve against the working directory.

A leaf: it imports nothing of bastion, so every layer (engine, server, launch, bench) uses it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Mapping

BASTION_ROOT = str(Path(__file__).resolve().parent.parent)  # the folder that holds this `bastion`


def _site_folders() -> set[str]:
    """The site-packages folders every child of this interpreter has on its path anyway."""
    import site

    folders = [*site.getsitepackages(), site.getusersitepackages()]
    return {str(Path(f).resolve()) for f in folders}


def python_command(module: str, *args: str) -> list[str]:
    """`python -P -m module args`, with this interpreter."""
    return [sys.executable, "-P", "-m", module, *args]


def python_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default: ours) for a Python child: PYTHONPATH is bastion's root, then the absolute
    entries of env's PYTHONPATH (no empty or relative one)."""
    env = dict(os.environ if env is None else env)
    own = [] if BASTION_ROOT in _site_folders() else [BASTION_ROOT]
    entries = [*own, *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if os.path.isabs(p))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(entries))  # NOTE: in order, each once
    return env
