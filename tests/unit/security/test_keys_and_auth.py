"""API keys (file, env), JWTs and the authenticator: parsing, errors that name the file, lookups."""
from __future__ import annotations

import time

import jwt
import pytest

from bastion.config.security import JwtConfig, Limits, SecurityConfig
from bastion.security.auth import AuthError, Authenticator
from bastion.security.keys import KeyFileError, KeyTable, digest, load_key_file, secret_keys

ALICE = "alice-key-0123456789abcdef"


def write(tmp_path, text: str):
    path = tmp_path / "keys.toml"
    path.write_text(text)
    return str(path)


def test_key_file_entries_limits_and_defaults(tmp_path):
    path = write(tmp_path, f"""
[defaults]
requests_per_minute = 100
[keys.alice]
key = "{ALICE}"
tenant = "acme"
scopes = ["inference", "metrics"]
models = ["demo"]
tokens_per_minute = 500
[keys.bob]
sha256 = "{digest('bob-key-0123456789abcdef')}"
""")
    alice, bob = load_key_file(path)
    assert (alice.name, alice.tenant, alice.scopes, alice.models) == ("alice", "acme", ("inference", "metrics"), ("demo",))
    assert alice.limits == Limits(100, 500, None)
    assert alice.sha256 == digest(ALICE) and ALICE not in repr(alice)
    assert (bob.tenant, bob.scopes, bob.limits) == ("bob", ("inference",), Limits(100, None, None))
    table = KeyTable((alice, bob))
    assert table.find(ALICE).name == "alice"
    assert table.find("bob-key-0123456789abcdef").name == "bob"
    assert table.find("nope") is None


@pytest.mark.parametrize("body, needle", [
    ("[keys.a]\ntenant = 'x'\n", "exactly one of 'sha256' or 'key'"),
    ("[keys.a]\nkey = 'short'\n", "at least 16 characters"),
    ("[keys.a]\nsha256 = 'abc'\n", "64 hex digits"),
    (f"[keys.a]\nkey = '{ALICE}'\nscopes = ['root']\n", "'scopes' must be"),
    (f"[keys.a]\nkey = '{ALICE}'\nrequests_per_minute = 0\n", "requests_per_minute must be a positive"),
    (f"[keys.a]\nkey = '{ALICE}'\ncolour = 1\n", "unknown field(s) ['colour']"),
    (f"[keys.a]\nkey = '{ALICE}'\n[keys.b]\nkey = '{ALICE}'\n", "are the same key"),
    ("[keys]\n", "no keys"),
    ("keys = [", "not valid TOML"),
])
def test_bad_key_files_name_the_file_and_entry_never_the_key(tmp_path, body, needle):
    path = write(tmp_path, body)
    with pytest.raises(KeyFileError) as err:
        load_key_file(path)
    assert needle in str(err.value) and path in str(err.value)
    assert ALICE not in str(err.value)


def test_missing_key_file_names_flag(tmp_path):
    with pytest.raises(KeyFileError, match=r"--api-key-file"):
        load_key_file(str(tmp_path / "absent.toml"))


def test_env_style_key_lists():
    keys = secret_keys(" k1-0123456789abcdef , k2-0123456789abcdef,", "env")
    assert [k.name for k in keys] == ["env-1", "env-2"]
    assert KeyTable(keys).find("k2-0123456789abcdef").name == "env-2"


def headers(value: str, name: bytes = b"authorization") -> dict:
    return {name: value.encode()}


def test_authenticator_headers_and_scopes(tmp_path):
    path = write(tmp_path, f"[keys.alice]\nkey = '{ALICE}'\n")
    auth = Authenticator(SecurityConfig(api_key_file=path, default_limits=Limits(7)))
    for h in (headers(f"Bearer {ALICE}"), headers(f"bearer {ALICE}"), headers(f"BEARER  {ALICE} "),
              headers(ALICE, b"x-api-key")):
        principal = auth.authenticate(h)
        assert principal.name == "alice" and principal.limits.requests_per_minute == 7
    for h in ({}, headers("Basic abc"), headers("Bearer wrong")):
        with pytest.raises(AuthError) as err:
            auth.authenticate(h)
        assert err.value.status == 401
    with pytest.raises(AuthError) as err:
        auth.authorize(auth.authenticate(headers(f"Bearer {ALICE}")), "admin")
    assert err.value.status == 403


def test_bearer_and_x_api_key_together_must_agree(tmp_path):
    """Anthropic's clients send `x-api-key`, OpenAI's `Authorization: Bearer`; one client may send
    both. The same key twice is that key; two different ones are a 401, even if one is valid."""
    path = write(tmp_path, f"[keys.alice]\nkey = '{ALICE}'\n")
    auth = Authenticator(SecurityConfig(api_key_file=path))
    both = {b"authorization": f"Bearer {ALICE}".encode(), b"x-api-key": f" {ALICE}".encode()}
    assert auth.authenticate(both).name == "alice"
    for other in ("wrong", ALICE + "x"):
        for h in ({b"authorization": f"Bearer {ALICE}".encode(), b"x-api-key": other.encode()},
                  {b"authorization": f"Bearer {other}".encode(), b"x-api-key": ALICE.encode()}):
            with pytest.raises(AuthError) as err:
                auth.authenticate(h)
            assert err.value.status == 401 and "different credentials" in str(err.value)
    # a non-Bearer Authorization (Basic) is not a credential here: the x-api-key is
    assert auth.authenticate({b"authorization": b"Basic abc", b"x-api-key": ALICE.encode()}).name == "alice"


def test_no_credentials_means_anonymous_with_every_scope():
    principal = Authenticator(SecurityConfig()).authenticate({})
    assert principal.kind == "anonymous" and principal.scopes == {"inference", "metrics", "admin"}


def test_reload_keeps_old_keys_on_a_bad_file(tmp_path):
    path = write(tmp_path, f"[keys.alice]\nkey = '{ALICE}'\n")
    auth = Authenticator(SecurityConfig(api_key_file=path))
    write(tmp_path, "[keys.alice]\nkey = 'short'\n")
    assert not auth.reload()
    assert auth.authenticate(headers(f"Bearer {ALICE}")).name == "alice"
    write(tmp_path, "[keys.bob]\nkey = 'bob-key-0123456789abcdef'\n")
    assert auth.reload()
    with pytest.raises(AuthError):
        auth.authenticate(headers(f"Bearer {ALICE}"))


SECRET = "s" * 40


def token(**claims) -> str:
    now = int(time.time())
    return jwt.encode({"sub": "svc", "exp": now + 60, **claims}, SECRET, algorithm="HS256")


def test_jwt_claims_give_principal_tenant_scopes_and_limits(tmp_path):
    (tmp_path / "jwt").write_text(SECRET)
    auth = Authenticator(SecurityConfig(jwt=JwtConfig(secret_file=str(tmp_path / "jwt"), issuer="iss",
                                                      audience="bastion")))
    p = auth.authenticate(headers("Bearer " + token(iss="iss", aud="bastion", tenant="t1",
                                                     scope="inference metrics", requests_per_minute=5,
                                                     models=["demo"])))
    assert (p.name, p.kind, p.tenant, p.scopes, p.models) == ("svc", "jwt", "t1", {"inference", "metrics"}, ("demo",))
    assert p.limits.requests_per_minute == 5 and p.limit_key == "jwt:svc"
    now = int(time.time())
    bad = [token(iss="other", aud="bastion"), token(iss="iss", aud="else"),
           token(iss="iss", aud="bastion", exp=now - 120), token(iss="iss", aud="bastion", nbf=now + 120),
           jwt.encode({"sub": "svc", "iss": "iss", "aud": "bastion"}, SECRET, algorithm="HS256"),
           jwt.encode({"sub": "svc", "exp": now + 60, "iss": "iss", "aud": "bastion"}, "x" * 40, algorithm="HS256"),
           token(iss="iss", aud="bastion", scope="root")]
    for t in bad:
        with pytest.raises(AuthError) as err:
            auth.authenticate(headers("Bearer " + t))
        assert err.value.status == 401 and t not in str(err.value)
    # within the leeway, a just-expired token still passes
    assert auth.authenticate(headers("Bearer " + token(iss="iss", aud="bastion", exp=now - 5))).name == "svc"


def test_jwt_secret_file_problems_name_the_flag(tmp_path):
    with pytest.raises(ValueError, match="--jwt-secret-file"):
        Authenticator(SecurityConfig(jwt=JwtConfig(secret_file=str(tmp_path / "absent"))))
    (tmp_path / "short").write_text("tiny")
    with pytest.raises(ValueError, match="fewer than 32 bytes"):
        Authenticator(SecurityConfig(jwt=JwtConfig(secret_file=str(tmp_path / "short"))))
    (tmp_path / "pub").write_text("not a key")
    with pytest.raises(ValueError, match="--jwt-public-key-file"):
        Authenticator(SecurityConfig(jwt=JwtConfig(public_key_file=str(tmp_path / "pub"))))
