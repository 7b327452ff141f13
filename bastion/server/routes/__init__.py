"""The routes of an API server: parse the body, make one call, shape the answer."""
from __future__ import annotations

from bastion.server.frontend import Frontend


def frontend_of(request) -> Frontend:
    """The front end `build_app` gave this request's app."""
    return request.app.state.frontend
