"""Stored responses as one principal sees them: the previous response a follow-up continues,
keeping a new one, reading and deleting. Another principal's response is not there for this
one: 404, as if it never existed.

A record is the Response object and the conversation it answered (every input item of the
chain so far: earlier turns' input and output items, then this request's input), as JSON. A
follow-up's conversation is the previous record's items, then its output, then the new input
(its `instructions` are its own: OpenAI's rule). Nothing of a record is logged or counted
beyond its size."""
from __future__ import annotations

import hashlib
import logging

import msgspec

from bastion.server import metrics
from bastion.server.caller import Caller
from bastion.server.http.errors import APIError
from bastion.server.responses.store.client import ResponseStoreClient

logger = logging.getLogger(__name__)

# NOTE: ours are `resp_` and 32 hex digits; a longer id, or one not ASCII, is no stored
# response's and is not sent (a message over the store socket's bound would cost this API server
# its connection; a lone surrogate cannot be encoded).
MAX_ID_CHARS = 128
_NO_STORE = ("this server keeps no responses (--responses-store-max-count 0), so none can be "
             "continued")


class ResponseKeeping:
    """The response store for one caller (`store` None: the server keeps none)."""

    def __init__(self, store: ResponseStoreClient | None, caller: Caller) -> None:
        # the owner as a digest: a fixed size on the wire, and no principal's name in the store
        self.store, self.owner = store, hashlib.sha256(
            caller.limit_key.encode("utf-8", "surrogatepass")).hexdigest()

    @property
    def enabled(self) -> bool:
        return self.store is not None

    async def conversation_before(self, previous_id: str | None) -> list[dict]:
        """The items a follow-up of `previous_id` continues (none without one); 404 when this
        caller has no such response."""
        if previous_id is None:
            return []
        if self.store is None:
            raise APIError(400, _NO_STORE, "previous_response_id")
        record = await self._record(previous_id, "previous_response_id")
        return record["input"] + record["response"]["output"]

    async def keep(self, response: dict, conversation: list[dict]) -> bool:
        """Keep `response` and the `conversation` it answered; False when it is too large."""
        record = msgspec.json.encode({"response": response, "input": conversation})
        kept = await self.store.put(self.owner, response["id"], record)
        if not kept:
            metrics.RESPONSES_NOT_KEPT.inc()
            logger.warning("a response of %d bytes was answered but not kept "
                           "(--responses-store-max-response-bytes)", len(record))
        return kept

    async def read(self, response_id: str) -> dict:
        return (await self._record(response_id, "response_id"))["response"]

    async def delete(self, response_id: str) -> dict:
        if not self._may_exist(response_id) or not await self.store.delete(self.owner, response_id):
            raise _not_found(response_id)
        return {"id": response_id, "object": "response", "deleted": True}

    def _may_exist(self, response_id: str) -> bool:
        return self.store is not None and len(response_id) <= MAX_ID_CHARS and response_id.isascii()

    async def _record(self, response_id: str, field: str) -> dict:
        record = await self.store.get(self.owner, response_id) if self._may_exist(response_id) else None
        if record is None:
            raise _not_found(response_id, field)
        return msgspec.json.decode(record)


def _not_found(response_id: str, field: str = "response_id") -> APIError:
    return APIError(404, f"Response with id '{response_id}' not found.", field, "response_not_found")
