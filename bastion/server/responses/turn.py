"""One `POST /v1/responses`: continue the previous response (if any), run the conversation on
the chat path (the front end), shape the sequence as a Response, whole or streamed, and keep it
when asked (`store`, the default) before the client sees its end, so a follow-up sent after it
finds it on any API server."""
from __future__ import annotations

from typing import AsyncIterator

from bastion.server.caller import Caller
from bastion.server.frontend import Frontend
from bastion.server.generation import Generation, SequenceState
from bastion.server.http.errors import APIError
from bastion.server.responses.chat_body import ResponsesChatBody, input_items
from bastion.server.responses.continuation import ResponseKeeping
from bastion.server.responses.envelope import ResponseEnvelope, status_of, usage
from bastion.server.responses.events import EventWriter
from bastion.server.responses.output import OutputItems
from bastion.server.responses.request import ResponsesRequest
from bastion.server.tools.shaping import ToolAnswer


class ResponseTurn:
    """One request's Response: made by `start`, then `finish` (whole) or `events` (streamed)."""

    def __init__(self, body: ResponsesRequest, frontend: Frontend, caller: Caller,
                 keeping: ResponseKeeping) -> None:
        self.body, self.frontend, self.caller, self.keeping = body, frontend, caller, keeping
        self.conversation: list[dict] = []
        self.chat: ResponsesChatBody | None = None
        self.envelope: ResponseEnvelope | None = None

    async def start(self) -> Generation:
        """The previous response's conversation (404 if this caller has none such), then admit
        and submit the generation (every refusal of the chat path, naming Responses fields)."""
        body = self.body
        earlier = await self.keeping.conversation_before(body.previous_response_id)
        self.chat = ResponsesChatBody(body, earlier)
        generation = await self.frontend.generate(self.chat, self.caller)
        self.conversation = earlier + input_items(body)
        plan = self.chat.tool_plan
        self.envelope = ResponseEnvelope(body, self.frontend.model_name,
                                         plan.parallel if plan else body.parallel_tool_calls is not False)
        self.envelope.sampled_with(generation.params.temperature, generation.params.top_p)
        self.envelope.stored = body.store and self.keeping.enabled  # until a keep fails
        return generation

    def _output(self, generation: Generation) -> OutputItems:
        plan = self.chat.tool_plan
        tools = plan and ToolAnswer(plan, self.frontend.tool_parsing, self.body.skip_special_tokens)
        reasoning = self.frontend.reasoning
        return OutputItems(tools, reasoning and reasoning.splitter(generation.prompt_ids))

    async def finish(self, seq: SequenceState, generation: Generation) -> dict:
        """The whole Response of a finished sequence (kept if asked)."""
        output = self._output(generation)
        output.feed(seq.text.text, seq.finish_reason)
        return await self._final(status_of(seq.finish_reason), output, generation)

    async def events(self, generation: Generation) -> AsyncIterator[str]:
        """The stream: lifecycle events around the output items' events."""
        writer, output, envelope = EventWriter(), self._output(generation), self.envelope
        yield writer.event("response.created", response=envelope.response("in_progress", []))
        yield writer.event("response.in_progress", response=envelope.response("in_progress", []))
        finish = None
        try:
            async for deltas in generation.deltas():
                for delta in deltas:
                    finish = delta.finish_reason or finish
                    for text in writer.items(output, output.feed(delta.text, delta.finish_reason)):
                        yield text
            status = status_of(finish)
            response = await self._final(status, output, generation)
        except APIError as exc:
            error = {"code": str(exc.code or exc.status), "message": exc.message}
            output.cut()
            yield writer.event("error", **error, param=exc.param)
            yield writer.event("response.failed", response=envelope.response(
                "failed", output.items, usage(generation.prompt_tokens, generation.completion_tokens,
                                              generation.num_cached_tokens), error))
            return
        yield writer.event(f"response.{status}", response=response)

    async def _final(self, status: str, output: OutputItems, generation: Generation) -> dict:
        envelope = self.envelope
        used = usage(generation.prompt_tokens, generation.completion_tokens, generation.num_cached_tokens)
        response = envelope.response(status, output.items, used)
        if envelope.stored and not await self.keeping.keep(response, self.conversation):
            envelope.stored = False
            response["store"] = False
        return response
