"""Tensor parallelism: which slice of each weight a worker holds (plan.py) and the all-reduce
that joins the workers' partial sums (group.py)."""
