"""The file of the shared-memory collectives (model/parallel/shm_reduce.py): worker 0 makes it
(0600) and refuses a file or symbolic link already at its path, so a planted one is never
written through or used; the other workers never follow a symbolic link."""
from __future__ import annotations

import errno
import stat

import pytest

from bastion.model.parallel.shm_reduce import SharedMemoryReduce


def test_worker_0_makes_the_file_0600_and_another_worker_maps_the_same_bytes(tmp_path):
    path = tmp_path / "store.shm"
    zero = SharedMemoryReduce(path, 2, 0, 64)
    one = SharedMemoryReduce(path, 2, 1, 64)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        zero.bytes[-1] = 9
        assert int(one.bytes[-1]) == 9
    finally:
        zero.close()
        one.close()


@pytest.mark.parametrize("planted", ["file", "symlink"])
def test_worker_0_refuses_a_file_or_link_planted_at_the_path(tmp_path, planted):
    target = tmp_path / "elsewhere"
    target.write_bytes(b"not yours")
    path = tmp_path / "store.shm"
    if planted == "file":
        path.write_bytes(b"planted")
    else:
        path.symlink_to(target)
    with pytest.raises(FileExistsError):
        SharedMemoryReduce(path, 2, 0, 64)
    assert target.read_bytes() == b"not yours"
    assert path.is_symlink() if planted == "symlink" else path.read_bytes() == b"planted"


def test_the_other_workers_refuse_a_symbolic_link(tmp_path):
    made = SharedMemoryReduce(tmp_path / "real.shm", 2, 0, 64)  # a proper file, elsewhere
    path = tmp_path / "store.shm"
    path.symlink_to(tmp_path / "real.shm")
    try:
        with pytest.raises(OSError) as refused:
            SharedMemoryReduce(path, 2, 1, 64)
        assert refused.value.errno == errno.ELOOP
    finally:
        made.close()
