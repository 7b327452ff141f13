"""The processes of one tensor-parallel rank: worker 0's view of the others (workers.py), a
non-zero worker's loop (worker.py) and the step broadcast between them (step_wire.py)."""
