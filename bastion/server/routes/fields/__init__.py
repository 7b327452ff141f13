"""Request-body fields the route bodies share, a file per job: structured.py (output constraints
-> one StructuredOutputs), template_kwargs.py (chat template variables), unsupported.py (fields
refused because they would change the answer), sampling.py (sampling fields ->
SamplingParams, logit_bias, stop strings)."""
