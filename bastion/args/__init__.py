"""Command-line flags, one file per group; each builds its part of the config tree."""
