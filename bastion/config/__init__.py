"""The frozen config tree, split by concern; validated once, before any process starts."""
