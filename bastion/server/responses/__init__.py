"""OpenAI's Responses API (`/v1/responses`) on bastion's chat path.

request.py (the body) -> conversation.py (input items -> chat messages) -> chat_body.py (the
front end's view of the body: prompt, budget, sampling, constraint) -> the chat path ->
output.py (a sequence's text -> output items: the one place text becomes items) ->
envelope.py (the Response object) and events.py (the typed stream); continuation.py reads and
keeps responses in the launcher's store (store/)."""
