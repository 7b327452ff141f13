"""`bastion bench ...`: measurements side by side in one run, and the harness that starts servers for them."""
