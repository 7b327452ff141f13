"""OpenAI tool calling for `/v1/chat/completions`: a file per job.

request.py      the tool fields (pydantic) and the ToolPlan they ask for
constraint.py   a named or required tool_choice as a StructuredOutputs JSON schema
messages.py     assistant tool_calls and tool results as chat templates read them
calls.py        what parsers report (content, call pieces), whole calls, ids
constrained.py  readers of constrained output: a named call, an array of calls
hermes.py llama3_json.py mistral.py   the `auto` parsers, one per model family
choose.py       the parser of a chat template (or --tool-call-parser) and of each plan
shaping.py      the message of a whole answer and the deltas of a stream
"""
