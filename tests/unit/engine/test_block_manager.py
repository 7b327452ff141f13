"""Block manager: exact block ids, prefix hits, hit counts and eviction order."""
from __future__ import annotations

import pytest

from bastion.engine.kv_cache import BlockManager
from bastion.engine.request import Request
from bastion.sampling_params import SamplingParams


def make_req(tokens: list[int], salt: str | None = None, rid: str = "r") -> Request:
    return Request(rid, tokens, SamplingParams(max_tokens=4), frozenset(), 10_000, cache_salt=salt)


def computed(bm: BlockManager, req: Request, upto: int | None = None) -> None:
    """Pretend the KV of `req`'s tokens was written, and publish its full blocks."""
    req.num_computed_tokens = req.num_tokens if upto is None else upto
    bm.register_computed(req)


def admit(bm: BlockManager, req: Request) -> list[int]:
    hits = bm.find_cached_prefix(req)
    assert bm.allocate(req, req.num_tokens - len(hits) * bm.block_size, hits)
    req.num_computed_tokens = len(hits) * bm.block_size
    return hits


def test_blocks_come_from_the_front_of_the_free_queue():
    bm = BlockManager(8, 4)
    req = make_req(list(range(10)))
    assert admit(bm, req) == []
    assert req.block_ids == [0, 1, 2]
    assert bm.num_free_blocks == 5


def test_full_blocks_are_shared_after_their_kv_is_written():
    bm = BlockManager(8, 4)
    a = make_req(list(range(10)), rid="a")
    admit(bm, a)
    b = make_req(list(range(8)) + [99, 98, 97], rid="b")
    assert bm.find_cached_prefix(b) == []          # NOTE: not registered before KV is written
    computed(bm, a)
    assert admit(bm, b) == [0, 1]
    assert b.block_ids == [0, 1, 3]
    assert [bm.blocks[i].ref_count for i in (0, 1, 2, 3)] == [2, 2, 1, 1]
    assert b.num_computed_tokens == 8


def test_the_block_of_the_last_token_is_never_matched():
    bm = BlockManager(8, 4)
    a = make_req(list(range(8)))
    admit(bm, a)
    computed(bm, a)
    same = make_req(list(range(8)), rid="same")
    assert bm.find_cached_prefix(same) == [0]      # block 1 holds the last token
    longer = make_req(list(range(9)), rid="longer")
    assert bm.find_cached_prefix(longer) == [0, 1]


def test_cache_salt_separates_tenants():
    bm = BlockManager(8, 4)
    a = make_req(list(range(9)), salt="tenant-a")
    admit(bm, a)
    computed(bm, a)
    assert bm.find_cached_prefix(make_req(list(range(9)), salt="tenant-b")) == []
    assert bm.find_cached_prefix(make_req(list(range(9)))) == []
    assert bm.find_cached_prefix(make_req(list(range(9)), salt="tenant-a")) == [0, 1]


def test_a_hash_hit_with_different_tokens_is_refused():
    bm = BlockManager(8, 4)
    a = make_req(list(range(9)))
    admit(bm, a)
    computed(bm, a)
    bm.blocks[1].token_ids = (4, 5, 6, 666)        # as if two contents shared a hash
    assert bm.find_cached_prefix(make_req(list(range(9)), rid="b")) == [0]


def test_freed_blocks_evict_uncached_first_then_least_recently_used_tail_first():
    bm = BlockManager(8, 4)
    a = make_req(list(range(10)))
    admit(bm, a)
    computed(bm, a)                                 # blocks 0, 1 cached; block 2 partial
    bm.free(a)
    assert list(bm.free_queue) == [2, 3, 4, 5, 6, 7, 1, 0]
    filler = make_req(list(range(100, 124)), rid="filler")   # 6 blocks
    admit(bm, filler)
    assert filler.block_ids == [2, 3, 4, 5, 6, 7]
    assert set(bm.cached.values()) == {0, 1}
    more = make_req(list(range(200, 204)), rid="more")
    admit(bm, more)
    assert more.block_ids == [1]                    # the tail block is evicted first
    assert set(bm.cached.values()) == {0}
    assert bm.find_cached_prefix(make_req(list(range(9)), rid="again")) == [0]


def test_a_hit_on_a_free_cached_block_takes_it_off_the_free_queue():
    bm = BlockManager(4, 4)
    a = make_req(list(range(9)))
    admit(bm, a)
    computed(bm, a)
    bm.free(a)
    assert bm.num_free_blocks == 4
    b = make_req(list(range(9)), rid="b")
    assert admit(bm, b) == [0, 1]
    assert b.block_ids == [0, 1, 2]
    assert bm.num_free_blocks == 1
    assert 0 not in bm.free_queue and 1 not in bm.free_queue


def test_failed_allocation_changes_nothing():
    bm = BlockManager(4, 4)
    a = make_req(list(range(9)))
    admit(bm, a)
    computed(bm, a)
    bm.free(a)
    before = (list(bm.free_queue), dict(bm.cached))
    big = make_req(list(range(8)) + list(range(50, 60)), rid="big")   # 18 tokens: 5 blocks
    hits = bm.find_cached_prefix(big)
    assert hits == [0, 1]
    assert not bm.allocate(big, big.num_tokens - 8, hits)
    assert (list(bm.free_queue), dict(bm.cached)) == before
    assert big.block_ids == [] and all(b.ref_count == 0 for b in bm.blocks)


def test_hit_rate_counts_tokens():
    bm = BlockManager(8, 4)
    bm.record_lookup(10, 0)
    bm.record_lookup(10, 8)
    assert (bm.query_tokens, bm.hit_tokens) == (20, 8)


def test_prefix_caching_off_never_hits():
    bm = BlockManager(8, 4, enable_prefix_caching=False)
    a = make_req(list(range(9)))
    admit(bm, a)
    computed(bm, a)
    assert bm.cached == {}
    assert bm.find_cached_prefix(make_req(list(range(9)), rid="b")) == []


@pytest.mark.parametrize("n", [1, 4, 5, 16, 17])
def test_blocks_needed_rounds_up(n):
    assert BlockManager(8, 4).blocks_needed(n) == -(-n // 4)
