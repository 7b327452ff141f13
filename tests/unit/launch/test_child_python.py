"""How bastion starts its Python children (bastion/child_python.py): `python -P -m`, bastion's own
root first on PYTHONPATH, no empty or relative PYTHONPATH entry; a real child started that way
from a folder with planted modules imports none of them, where a plain `python -m` does."""
from __future__ import annotations

import os
import subprocess
import sys

from planted_modules import imports_seen, plant

from bastion.child_python import BASTION_ROOT, python_command, python_environment


def test_pythonpath_is_bastions_root_then_only_absolute_entries():
    env = python_environment({"PYTHONPATH": os.pathsep.join(["", "rel", "/abs/one", "", "./x", "/abs/two",
                                                             BASTION_ROOT, ""]), "OTHER": "kept"})
    assert env["PYTHONPATH"] == os.pathsep.join([BASTION_ROOT, "/abs/one", "/abs/two"])
    assert env["OTHER"] == "kept"
    assert python_environment({})["PYTHONPATH"] == BASTION_ROOT
    assert python_command("bastion.launch.child", "engine-0") == [
        sys.executable, "-P", "-m", "bastion.launch.child", "engine-0"]


def test_a_launch_child_in_a_planted_folder_imports_nothing_from_it(tmp_path):
    """The launcher's child entry point, given no spec (it exits 1 at the EOF), imports msgspec
    and zmq on its way: from the folder when started plainly, from nowhere else when started
    the way bastion starts it."""
    marker = tmp_path / "imports.log"
    folder = plant(tmp_path / "shared", marker)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(["", BASTION_ROOT, "."])}  # two more ways to the cwd
    plain = subprocess.run([sys.executable, "-m", "bastion.launch.child", "engine-0"], cwd=folder, env=env,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 1, plain.stderr
    assert {line.split()[0] for line in imports_seen(marker)} == {"msgspec", "zmq"}  # the control
    marker.unlink()
    safe = subprocess.run(python_command("bastion.launch.child", "engine-0"), cwd=folder,
                          env=python_environment(env), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=120)
    assert safe.returncode == 1, safe.stderr
    assert imports_seen(marker) == []
