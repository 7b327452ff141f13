"""The response store's bounds (`/v1/responses` with `store`, `previous_response_id`)."""
from __future__ import annotations

from dataclasses import dataclass

# NOTE: what a store message carries beyond its record: the owner, the id, msgpack's framing.
MESSAGE_OVERHEAD_BYTES = 64 * 2**10


@dataclass(frozen=True)
class ResponseStoreConfig:
    """How long and how much the launcher's response store keeps. `max_count` 0: no store
    (`store: true` keeps nothing, `previous_response_id` is refused)."""

    ttl_s: float = 3600.0
    max_count: int = 1000
    max_bytes: int = 64 * 2**20
    max_response_bytes: int = 8 * 2**20

    def __post_init__(self) -> None:
        if not self.ttl_s > 0:
            raise ValueError(f"--responses-store-ttl-s must be positive, got {self.ttl_s}")
        if self.max_count < 0:
            raise ValueError(f"--responses-store-max-count must be non-negative, got {self.max_count}")
        if self.max_response_bytes < 1024:
            raise ValueError("--responses-store-max-response-bytes must be at least 1024, got "
                             f"{self.max_response_bytes}")
        if self.max_bytes < self.max_response_bytes:
            raise ValueError(f"--responses-store-max-bytes ({self.max_bytes}) must be at least "
                             f"--responses-store-max-response-bytes ({self.max_response_bytes})")

    @property
    def enabled(self) -> bool:
        return self.max_count > 0

    @property
    def max_message_bytes(self) -> int:
        """The bound on one message of the store's socket: the largest record and its framing."""
        return self.max_response_bytes + MESSAGE_OVERHEAD_BYTES
