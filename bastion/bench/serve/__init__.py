"""`bastion bench serve`: load a running server, or compare deployments in ABBA pairs."""
