"""Reasoning output: a model's thinking (`<think>...</think>`) apart from its answer.

formats.py   the formats (`qwen3`, `deepseek_r1`): markers, where an output starts (`Phase`)
splitter.py  one sequence's text -> (thinking, answer), streamed at any chunking, or whole
choose.py    --reasoning-parser or the chat template's markers -> `Reasoning`, per server
chat.py      chat completions' `reasoning_content` / `reasoning` (the one file that knows a
             response shape; other routes shape the splits their own way)

How a route uses it (independent of any response shape): the front end holds one `Reasoning`
(None when the server reads no thinking). For each sequence of a chat request make
`reasoning.splitter(generation.prompt_ids)`; feed it every text delta as it is released
(`split = splitter.feed(text)`, then `splitter.finish()` when the sequence ends) and send
`split.reasoning` as the thinking (chat's `reasoning_content`, a Responses `reasoning` item,
an Anthropic `thinking` block) and `split.content` as the answer, which is what tool-call
parsers read. A whole answer: `split_text(reasoning.splitter(prompt_ids), text)`. Output
constraints start after the thinking on their own: the front end sets `grammar_starts_after`
(`reasoning.grammar_trigger`) on every chat prompt's sampling parameters.
"""
