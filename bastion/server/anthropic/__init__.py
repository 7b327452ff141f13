"""Anthropic's Messages API on bastion's chat path, a file per job.

request.py   the bodies of `/v1/messages` and `/v1/messages/count_tokens` (pydantic)
to_chat.py   a Messages body as bastion's chat request; refusals named in the body's terms
blocks.py    one sequence's text as content blocks and their stream events (the thinking seam)
answer.py    the whole `message`, the SSE events, stop reasons, the `error` event
"""
