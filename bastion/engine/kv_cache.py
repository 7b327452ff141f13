"""The block manager: a pool of fixed-size KV blocks with prefix caching. Pure Python, no torch.

Prefix caching keys each *full* block by a chained SHA-256 over (parent hash, token ids), with
the request's cache salt folded into the root so tenants never share entries. A hash is
registered only after the block's KV has been written, a hit is confirmed by comparing token
ids, and the block holding a request's last token is never matched (something must be computed
to produce logits). Free blocks form one LRU queue: blocks that carry no cached content sit at
the front and are reused first; freed cached blocks join the back and are evicted oldest first.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from array import array

from bastion.engine.request import Request


def root_hash(cache_salt: str | None) -> bytes:
    """The parent hash of a request's first block; differs per cache salt."""
    return hashlib.sha256(b"bastion-kv\x00" + (cache_salt or "").encode()).digest()


def chain_hash(parent: bytes, token_ids: list[int]) -> bytes:
    """SHA-256 over the parent block's hash and this block's token ids."""
    digest = hashlib.sha256(parent)
    digest.update(array("q", token_ids).tobytes())
    return digest.digest()


class Block:
    __slots__ = ("block_id", "ref_count", "block_hash", "token_ids")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_count = 0
        self.block_hash: bytes | None = None
        self.token_ids: tuple[int, ...] | None = None


class BlockManager:
    """Hands out KV blocks to requests, shares cached prefixes and reclaims blocks."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_queue: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached: dict[bytes, int] = {}
        self.query_tokens = 0
        self.hit_tokens = 0

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    @property
    def usage(self) -> float:
        """Share of blocks held by live requests (0..1)."""
        return 1.0 - len(self.free_queue) / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def _hash_full_blocks(self, req: Request, upto_tokens: int) -> None:
        bs = self.block_size
        tokens = req.all_token_ids
        for i in range(len(req.block_hashes), upto_tokens // bs):
            parent = req.block_hashes[-1] if req.block_hashes else root_hash(req.cache_salt)
            req.block_hashes.append(chain_hash(parent, tokens[i * bs:(i + 1) * bs]))

    def find_cached_prefix(self, req: Request) -> list[int]:
        """Block ids of the longest cached prefix of `req` (never its last token's block)."""
        if not self.enable_prefix_caching:
            return []
        bs = self.block_size
        max_blocks = (req.num_tokens - 1) // bs
        self._hash_full_blocks(req, max_blocks * bs)
        hits: list[int] = []
        for i in range(max_blocks):
            block_id = self.cached.get(req.block_hashes[i])
            if block_id is None:
                break
            # NOTE: a hash match alone is not trusted; the tokens must be equal too.
            if self.blocks[block_id].token_ids != tuple(req.all_token_ids[i * bs:(i + 1) * bs]):
                break
            hits.append(block_id)
        return hits

    def record_lookup(self, num_query_tokens: int, num_hit_tokens: int) -> None:
        """Count one admission's prefix-cache lookup for the hit-rate metric."""
        self.query_tokens += num_query_tokens
        self.hit_tokens += num_hit_tokens

    def allocate(self, req: Request, num_new_tokens: int, cached_blocks: list[int] = ()) -> bool:
        """Give `req` room for `num_new_tokens` more tokens after `cached_blocks`.

        Returns False, changing nothing, when the pool cannot supply the blocks.
        """
        reused = len(req.block_ids) + len(cached_blocks)
        total = req.num_computed_tokens + len(cached_blocks) * self.block_size + num_new_tokens
        needed = self.blocks_needed(total) - reused
        revived = sum(1 for b in cached_blocks if self.blocks[b].ref_count == 0)
        if needed > len(self.free_queue) - revived:
            return False
        for block_id in cached_blocks:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free_queue[block_id]
            block.ref_count += 1
            req.block_ids.append(block_id)
        if cached_blocks:
            req.num_registered_blocks = len(req.block_ids)  # hits are registered already
        for _ in range(max(needed, 0)):
            req.block_ids.append(self._take_free_block())
        return True

    def _take_free_block(self) -> int:
        block_id, _ = self.free_queue.popitem(last=False)
        block = self.blocks[block_id]
        if block.block_hash is not None:
            if self.cached.get(block.block_hash) == block_id:
                del self.cached[block.block_hash]
            block.block_hash = None
            block.token_ids = None
        assert block.ref_count == 0, block_id
        block.ref_count = 1
        return block_id

    def register_computed(self, req: Request) -> None:
        """Publish hashes of `req`'s full blocks whose KV is now written."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        full = min(req.num_computed_tokens // bs, len(req.block_ids))
        if full <= req.num_registered_blocks:
            return
        self._hash_full_blocks(req, full * bs)
        for i in range(req.num_registered_blocks, full):
            block_hash = req.block_hashes[i]
            block = self.blocks[req.block_ids[i]]
            if block_hash not in self.cached and block.block_hash is None:
                self.cached[block_hash] = block.block_id
                block.block_hash = block_hash
                block.token_ids = tuple(req.all_token_ids[i * bs:(i + 1) * bs])
        req.num_registered_blocks = full

    def free(self, req: Request) -> None:
        """Return `req`'s blocks to the pool; cached ones stay matchable until evicted."""
        # NOTE: tail blocks are released first so that, among one request's blocks, the end
        # of the sequence is evicted before its (more shareable) beginning.
        for block_id in reversed(req.block_ids):
            block = self.blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0, block_id
            if block.ref_count == 0:
                self.free_queue[block_id] = None
                if block.block_hash is None:
                    self.free_queue.move_to_end(block_id, last=False)
        req.block_ids = []
        req.num_registered_blocks = 0

    def reset_prefix_cache(self) -> None:
        """Forget every cached block that no request holds."""
        for block_id in self.free_queue:
            block = self.blocks[block_id]
            if block.block_hash is not None:
                self.cached.pop(block.block_hash, None)
                block.block_hash = None
                block.token_ids = None
