"""Flags of the Ray backend: checked before anything starts, each message naming its flag; the
actors' environment is chosen from the driver's at parse time."""
from __future__ import annotations

import pytest

from bastion.args.serve import serve_config
from bastion.cli import build_parser, main

pytest.importorskip("ray", reason="the Ray backend needs the ray extra: pip install 'bastion[ray]'")

RAY = ("-dp", "2", "--data-parallel-backend", "ray")


def config(*argv: str):
    return serve_config(build_parser().parse_args(["serve", *argv]))


@pytest.mark.parametrize("argv, message", [
    (["--ray-address", "10.0.0.1:6379"], "--ray-address needs --data-parallel-backend ray"),
    (["--ray-env-include", "X"], "--ray-env-include needs --data-parallel-backend ray"),
    ([*RAY, "--headless", "-dpa", "127.0.0.2"], "places every rank itself: drop --headless"),
    ([*RAY, "-dpl", "1"], "drop --data-parallel-size-local"),
    ([*RAY, "--internal-transport", "ipc"], "Ray ranks talk over TCP"),
    ([*RAY, "--internal-encryption", "off"], "Ray ranks need --internal-encryption on"),
    ([*RAY, "--ray-cpus-per-rank", "0"], "--ray-cpus-per-rank must be positive"),
    ([*RAY, "--ray-gpus-per-rank", "-1"], "--ray-gpus-per-rank must be non-negative"),
    ([*RAY, "-tp", "2", "--ray-gpus-per-rank", "0.5"],
     "--ray-gpus-per-rank is per tensor-parallel worker and each has its own GPU: with -tp 2 it must be "
     "a whole number, got 0.5"),
    ([*RAY, "--ray-env-include", "MY_*,HF_TOKEN"], "--ray-env-include: 'HF_TOKEN' looks like a secret"),
])
def test_bad_ray_flags_name_themselves(argv, message):
    with pytest.raises(ValueError, match=message.replace("*", r"\*")):
        config(*argv)


def test_the_internal_secret_is_not_used_with_ray(tmp_path, capsys):
    secret = tmp_path / "s"
    secret.write_text("s" * 48)
    assert main(["serve", *RAY, "--internal-secret-file", str(secret)]) == 2
    assert "--internal-secret-file is not used with --data-parallel-backend ray" in capsys.readouterr().err


def test_actor_environment_and_defaults(monkeypatch):
    monkeypatch.setenv("BASTION_HOST_IP", "127.0.0.2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    monkeypatch.setenv("MY_APP_MODE", "a")
    monkeypatch.setenv("BASTION_RAY_ENV_INCLUDE", "MY_APP_*")
    monkeypatch.setenv("BASTION_RAY_ENV_EXCLUDE", "HF_HUB_OFFLINE")
    ray = config(*RAY).ray
    env = dict(ray.env_vars)
    assert env.get("MY_APP_MODE") == "a"
    assert not {"HF_HUB_OFFLINE", "HF_TOKEN", "BASTION_HOST_IP"} & set(env)
    assert (ray.placement_strategy, ray.cpus_per_rank, ray.gpus_per_rank) == ("pack", 1.0, None)
    assert ray.driver_host == "127.0.0.2"  # the API servers listen on the driver's own address
    monkeypatch.setenv("BASTION_RAY_ENV_INCLUDE", "DB_PASSWORD")
    with pytest.raises(ValueError, match="BASTION_RAY_ENV_INCLUDE: 'DB_PASSWORD' looks like a secret"):
        config(*RAY)
