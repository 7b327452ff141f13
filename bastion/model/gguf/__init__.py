"""GGUF checkpoints (llama.cpp's single-file format), read with the `gguf` package.

One job per file: `reader.py` opens a file and reads its metadata, `arch.py` turns that into an
`ArchConfig`, `tokenizer.py` builds the tokenizer and chat template from it, `names.py` maps
llama.cpp's tensor names to ours, `tensors.py` reads one tensor (widened to float, or as an
`Int4Weight` for Q4_0/Q4_1), `weights.py` fills a model from all of them.
"""
