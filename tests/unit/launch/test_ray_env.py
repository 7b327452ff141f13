"""What Ray engine actors get from the driver's environment: deployment variables yes; the
driver's host address, device visibility, interfaces and every secret never; users extend both
lists (a secret cannot be included)."""
from __future__ import annotations

import pytest

from bastion.launch.ray.env import actor_environment, check_includes, split_patterns

DRIVER = {
    "BASTION_LOG_FORMAT": "json", "HF_HOME": "/models/hf", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "8",
    "NCCL_DEBUG": "INFO", "TOKENIZERS_PARALLELISM": "false",
    "BASTION_HOST_IP": "10.0.0.1", "CUDA_VISIBLE_DEVICES": "0,1", "NCCL_SOCKET_IFNAME": "eth0",
    "BASTION_API_KEY": "sk-secret", "HF_TOKEN": "hf_secret", "BASTION_JWT_SECRET": "s3",
    "NCCL_PASSWORD": "p", "HOME": "/root", "PATH": "/usr/bin", "MY_APP_MODE": "x", "AWS_SECRET_ACCESS_KEY": "a",
}


def test_deployment_variables_travel_and_host_settings_and_secrets_do_not():
    env = actor_environment(DRIVER)
    assert env == {"BASTION_LOG_FORMAT": "json", "HF_HOME": "/models/hf", "HF_HUB_OFFLINE": "1",
                   "OMP_NUM_THREADS": "8", "NCCL_DEBUG": "INFO", "TOKENIZERS_PARALLELISM": "false"}


def test_users_extend_both_lists_and_excludes_win():
    env = actor_environment(DRIVER, include=["MY_APP_*", "AWS_SECRET_ACCESS_KEY"], exclude=["HF_HOME", "NCCL_*"])
    assert env["MY_APP_MODE"] == "x"
    assert "HF_HOME" not in env and "NCCL_DEBUG" not in env
    assert "AWS_SECRET_ACCESS_KEY" not in env  # a secret never travels, even when included


def test_including_a_secret_is_refused_naming_the_source():
    assert split_patterns(["A,B", " C ", ""]) == ("A", "B", "C")
    check_includes(["MY_APP_*"], "--ray-env-include")
    with pytest.raises(ValueError, match=r"--ray-env-include: 'HF_TOKEN' looks like a secret"):
        check_includes(["HF_TOKEN"], "--ray-env-include")
    with pytest.raises(ValueError, match="BASTION_RAY_ENV_INCLUDE: 'SERVICE_SECRET_\\*'"):
        check_includes(["SERVICE_SECRET_*"], "BASTION_RAY_ENV_INCLUDE")
