"""The KV cache files of a tensor-parallel rank's workers (engine/tensor_parallel/shared_kv.py):
made 0600, zeroed, mapped by worker 0 too; a file of the wrong size is refused with both sizes
named."""
from __future__ import annotations

import errno
import stat

import pytest
import torch

from bastion.engine.tensor_parallel.shared_kv import map_caches

SHAPE = (2, 4, 8, 16)  # KV heads, blocks, block size, head dim


def test_a_cache_file_is_made_0600_and_mapped_by_another_opener(tmp_path):
    path = tmp_path / "store.kv1"
    own = map_caches(path, 2, SHAPE, torch.float32, create=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and all(not k.any() and not v.any() for k, v in own)
    own[1][0][0, 3] = 7.0
    seen = map_caches(path, 2, SHAPE, torch.float32)  # worker 0's view of this worker's file
    assert seen[1][0][0, 3].eq(7.0).all() and not seen[0][0].any()


def test_a_cache_file_of_the_wrong_size_is_refused_naming_both_sizes(tmp_path):
    path = tmp_path / "store.kv1"
    path.write_bytes(b"\0" * 100)
    path.chmod(0o600)
    with pytest.raises(RuntimeError, match=r"store\.kv1: 100 bytes, expected 16384"):
        map_caches(path, 2, SHAPE, torch.float32)


def test_a_link_planted_at_a_cache_path_is_refused_by_its_maker_and_by_worker_0(tmp_path):
    target = tmp_path / "elsewhere"
    map_caches(target, 2, SHAPE, torch.float32, create=True)
    path = tmp_path / "store.kv1"
    path.symlink_to(target)
    with pytest.raises(FileExistsError):
        map_caches(path, 2, SHAPE, torch.float32, create=True)
    with pytest.raises(OSError) as refused:
        map_caches(path, 2, SHAPE, torch.float32)
    assert refused.value.errno == errno.ELOOP
