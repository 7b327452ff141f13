"""`bastion bench structured`: what structured outputs cost. Grammar compile time over a corpus
of real-world JSON schemas (`schemas.json`, `compile_time.py`), and one server's output tokens/s
with and without a schema in one run (`serving.py`); `run.py` drives both and writes the report.
"""
