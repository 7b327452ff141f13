"""`bastion bench serve --compare-security`: the comparison (compare.py) and the credentials made for
the run (run_secrets.py)."""
