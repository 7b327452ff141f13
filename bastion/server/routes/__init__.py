"""The routes of an API server: parse the body, make one call, shape the answer."""
