"""The typed Server-Sent Events of a streamed response, each `event: <type>` with its JSON
(`type`, `sequence_number` from 0, and the event's fields), in OpenAI's order:

`response.created`, `response.in_progress`; per output item `response.output_item.added`, then
for a message `response.content_part.added`, `response.output_text.delta`...,
`response.output_text.done`, `response.content_part.done`, for a reasoning item the same with
`response.reasoning_text.delta`... and `response.reasoning_text.done`, and for a function call
`response.function_call_arguments.delta`..., `response.function_call_arguments.done`; then
`response.output_item.done`; last `response.completed` or `response.incomplete` (out of
tokens), or, when the generation fails midway, `error` then `response.failed`. No `[DONE]`."""
from __future__ import annotations

import json

from bastion.server.responses.output import ItemEvent, OutputItems


class EventWriter:
    """Numbers and writes one stream's events."""

    def __init__(self) -> None:
        self.sequence = 0

    def event(self, kind: str, **fields) -> str:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"

    def items(self, output: OutputItems, events: list[ItemEvent]) -> list[str]:
        """The events of the output items' changes."""
        return [text for change in events for text in self._item(output.items[change.index], change)]

    def _item(self, item: dict, change: ItemEvent) -> list[str]:
        at = {"output_index": change.index}
        if item["type"] in ("message", "reasoning"):
            part = {"item_id": item["id"], **at, "content_index": 0}
            text = item["content"][0]["text"]
            answer = item["type"] == "message"
            kind, extra = ("response.output_text", {"logprobs": []}) if answer else ("response.reasoning_text", {})
            if change.kind == "added":
                empty = {"type": "output_text", "text": "", "annotations": []} if answer \
                    else {"type": "reasoning_text", "text": ""}
                return [self.event("response.output_item.added", **at,
                                   item={**item, "content": [], "status": "in_progress"}),
                        self.event("response.content_part.added", **part, part=empty)]
            if change.kind == "text":
                return [self.event(f"{kind}.delta", **part, delta=change.delta, **extra)]
            return [self.event(f"{kind}.done", **part, text=text, **extra),
                    self.event("response.content_part.done", **part, part=item["content"][0]),
                    self.event("response.output_item.done", **at, item=item)]
        call = {"item_id": item["id"], **at}
        if change.kind == "added":
            return [self.event("response.output_item.added", **at,
                               item={**item, "arguments": "", "status": "in_progress"})]
        if change.kind == "arguments":
            return [self.event("response.function_call_arguments.delta", **call, delta=change.delta)]
        return [self.event("response.function_call_arguments.done", **call, name=item["name"],
                           arguments=item["arguments"]),
                self.event("response.output_item.done", **at, item=item)]
