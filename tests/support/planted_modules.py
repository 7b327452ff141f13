"""Modules planted in a folder that a server is started from, as another user of a shared
temporary folder could plant them. Each writes a line (its name, the importing process's pid and
argv) to a marker file when it is imported, then loads the real module in its place, so whatever
imported it runs on and a test can look afterwards at who imported what from that folder."""
from __future__ import annotations

from pathlib import Path

PLANTED = ("msgspec", "zmq", "numpy")  # imported by every bastion process (launcher, engine, workers)

_MODULE = '''\
import importlib.machinery, importlib.util, os, sys
with open({marker!r}, "a") as _marker:
    _marker.write(f"{{__name__}} pid={{os.getpid()}} argv={{sys.argv!r}}\\n")
_here = os.path.dirname(os.path.abspath(__file__))
_path = [p for p in sys.path if os.path.abspath(p or ".") != _here]
_spec = importlib.machinery.PathFinder.find_spec(__name__, _path)
_real = importlib.util.module_from_spec(_spec)
sys.modules[__name__] = _real  # NOTE: the import system returns what sys.modules holds at the end
_spec.loader.exec_module(_real)
'''


def plant(folder: Path, marker: Path, names: tuple[str, ...] = PLANTED) -> Path:
    """Write `names` as modules into `folder` (made if needed); their imports go to `marker`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name}.py").write_text(_MODULE.format(marker=str(marker)))
    return folder


def imports_seen(marker: Path) -> list[str]:
    """One line per import of a planted module so far (none: the marker file does not exist)."""
    return marker.read_text().splitlines() if marker.exists() else []
