"""Fail closed: every route of the app has an auth decision, and only /health and /version are public.

This walks the real app as `build_app` assembles it, so a route added without `@public` or
`@requires(scope)` fails here. The guard itself refuses such a route at run time.
"""
from __future__ import annotations

from types import SimpleNamespace

from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from bastion.config.security import SCOPES, SecurityConfig
from bastion.config.server import ServerConfig
from bastion.security.auth import PUBLIC, Authenticator, decision_of
from bastion.server.app import build_app

PUBLIC_PATHS = {"/health", "/version"}


def app_with(security: SecurityConfig = SecurityConfig()):
    state = SimpleNamespace(config=ServerConfig(served_model_names=("demo",)))
    return build_app(state, Authenticator(security), security)


def test_every_route_has_an_auth_decision():
    app = app_with()
    routes = app.router.routes
    assert routes, "the app has no routes?"
    for route in routes:
        assert isinstance(route, APIRoute), f"{route!r} is not an APIRoute the guard understands"
        decision = decision_of(route.endpoint)
        assert decision == PUBLIC or (decision and set(decision) <= set(SCOPES)), \
            f"{route.path} has no auth decision"
    public = {r.path for r in routes if decision_of(r.endpoint) == PUBLIC}
    assert public == PUBLIC_PATHS
    paths = {r.path for r in routes}
    assert {"/v1/chat/completions", "/v1/completions", "/generate", "/metrics", "/server_info",
            "/admin/reload-credentials", "/v1/models", "/tokenize", "/detokenize",
            "/openapi.json"} <= paths


def test_a_route_without_a_decision_is_refused_even_to_an_admin(tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text("[keys.root]\nkey = 'root-key-0123456789abcdef'\nscopes = ['inference', 'metrics', 'admin']\n")
    app = app_with(SecurityConfig(api_key_file=str(keys)))

    @app.get("/forgotten")
    async def forgotten():
        return {"leak": True}

    client = TestClient(app)
    reply = client.get("/forgotten", headers={"Authorization": "Bearer root-key-0123456789abcdef"})
    assert reply.status_code == 403 and "no auth decision" in reply.json()["error"]["message"]
    assert client.get("/forgotten").status_code == 401
    # an unknown path needs a credential before it is told 404
    assert client.get("/unknown").status_code == 401
    assert client.get("/unknown", headers={"x-api-key": "root-key-0123456789abcdef"}).status_code == 404


def supervisor_app(security: SecurityConfig = SecurityConfig()):
    from bastion.launch.restart import RestartPolicy
    from bastion.launch.supervisor.app import build_supervisor_app
    from bastion.launch.supervisor.supervised_rank import SupervisedRank

    slots = [SupervisedRank(i, f"http://127.0.0.1:{8000 + i}", RestartPolicy(5, 600), 3, 60.0) for i in range(2)]
    slots[0].state = "ready"
    view = SimpleNamespace(phase="serving", slots=slots, ready_ranks_needed=2)
    return build_supervisor_app(view, Authenticator(security)), view


def test_the_supervisor_routes_have_decisions_and_only_health_and_ready_are_public():
    app, _ = supervisor_app()
    routes = [r for r in app.router.routes]
    assert all(isinstance(r, APIRoute) and decision_of(r.endpoint) for r in routes)
    assert {r.path for r in routes if decision_of(r.endpoint) == PUBLIC} == {"/health", "/ready"}
    assert decision_of(next(r for r in routes if r.path == "/ranks").endpoint) == ("metrics", "admin")


def test_rank_details_need_the_metrics_or_admin_scope(tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text("[keys.user]\nkey = 'user-key-0123456789abcdef'\nscopes = ['inference']\n"
                    "[keys.ops]\nkey = 'ops-key-0123456789abcdefg'\nscopes = ['metrics']\n"
                    "[keys.root]\nkey = 'root-key-0123456789abcdef'\nscopes = ['admin']\n")
    app, view = supervisor_app(SecurityConfig(api_key_file=str(keys)))
    client = TestClient(app)
    assert client.get("/health").status_code == 200
    ready = client.get("/ready")
    assert ready.status_code == 503 and ready.json()["ready_ranks"] == 1  # 1 of the 2 it needs
    assert client.get("/ranks").status_code == 401
    denied = client.get("/ranks", headers={"x-api-key": "user-key-0123456789abcdef"})
    assert denied.status_code == 403 and "'metrics' or 'admin'" in denied.json()["error"]["message"]
    for key in ("ops-key-0123456789abcdefg", "root-key-0123456789abcdef"):
        reply = client.get("/ranks", headers={"Authorization": f"Bearer {key}"})
        assert reply.status_code == 200
        assert [row["state"] for row in reply.json()["data"]] == ["ready", "starting"]
    view.slots[1].state = "ready"
    assert client.get("/ready").status_code == 200
    view.phase = "draining"
    assert client.get("/ready").status_code == 503
