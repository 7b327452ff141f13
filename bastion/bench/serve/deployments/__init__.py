"""`bench serve --compare-*` modes that start two or three bastion deployments in turn and
compare them: internal transports, Ray actors against local ranks, disaggregated prefill and
decode against colocated ranks."""
