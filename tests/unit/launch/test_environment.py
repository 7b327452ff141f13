"""The two environment rules: local children lose only the API key; a secret-looking name is
hidden while a local Ray cluster starts (Ray's own settings stay) and comes back after."""
from __future__ import annotations

import os

import pytest

from bastion.launch.environment import child_environment, is_secret, secrets_hidden


@pytest.mark.parametrize("name, secret", [
    ("HF_TOKEN", True), ("BASTION_API_KEY", True), ("OPENAI_APIKEY", True), ("DB_PASSWORD", True),
    ("GOOGLE_APPLICATION_CREDENTIALS", True), ("TOKENIZERS_PARALLELISM", False), ("HF_HOME", False),
    ("KEYBOARD", False), ("OMP_NUM_THREADS", False),
])
def test_secret_names(name, secret):
    assert is_secret(name) is secret


def test_local_children_lose_the_api_key_and_keep_everything_else(monkeypatch):
    monkeypatch.setenv("BASTION_API_KEY", "sk-secret")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    env = child_environment("debug")
    assert "BASTION_API_KEY" not in env and env["BASTION_LOG_LEVEL"] == "debug"
    assert env["HF_TOKEN"] == "hf_secret"  # NOTE: the same user on the same host


def test_secrets_are_hidden_inside_the_block_except_rays_own(monkeypatch):
    monkeypatch.setenv("BASTION_API_KEY", "sk-secret")
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "ray")
    monkeypatch.setenv("HF_HOME", "/models")
    with secrets_hidden():
        assert "BASTION_API_KEY" not in os.environ and "HF_TOKEN" not in os.environ
        assert os.environ["RAY_AUTH_TOKEN"] == "ray" and os.environ["HF_HOME"] == "/models"
    assert os.environ["BASTION_API_KEY"] == "sk-secret" and os.environ["HF_TOKEN"] == "hf_secret"
