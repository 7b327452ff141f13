"""The Ray backend: every engine rank is a Ray actor in its own placement group."""
