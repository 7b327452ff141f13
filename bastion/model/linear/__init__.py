"""Linear layers whose weight form is chosen after loading: dense, prepacked, int8 or int4.

The model is built with `layer.Linear` modules holding a plain float weight, filled by the
loader; `prepare.prepare_linears` then gives each one a `LinearKernel` (the weight in the form
its kernel streams fastest on this device) and drops the float copy.
"""
