"""The HTTP layer of an API server: middleware, error bodies, SSE and the uvicorn server."""
