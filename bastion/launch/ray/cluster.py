"""The driver's membership of a Ray cluster, for `--data-parallel-backend ray`.

`join` joins the cluster at `--ray-address`, else RAY_ADDRESS, else starts a local one on this
node's address (never the external interface by default), without bastion's secrets in the
environment its processes copy. `leave` leaves it (and stops a local one).

Ray puts the driver's working directory first on the path of every worker of the job (its
`py_driver_sys_path`), so an actor would import a `msgspec.py` planted in the folder the server
was started from. The driver joins from `/` instead (`ray.init` reads it then; our own
directory is back right after), which only root can write (docs/security.md).
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
from typing import Iterator

from bastion.config.deployment import RayConfig
from bastion.launch.environment import secrets_hidden
from bastion.launch.net import HOST_IP_ENV
from bastion.launch.procs import ChildStartError


class RayCluster:
    """Joins (or starts) the cluster once; `connected` until `leave`."""

    def __init__(self, ray_config: RayConfig) -> None:
        self.ray_config = ray_config
        self.connected = False

    def join(self) -> None:
        """ray.init, or ChildStartError naming the flag; a local cluster must keep its address."""
        import ray

        address = self.ray_config.address or os.environ.get("RAY_ADDRESS") or None
        host_ip = os.environ.get(HOST_IP_ENV, "").strip() or None
        local_ip = None if address else local_cluster_address(host_ip)
        self._join(address, host_ip, local_ip)
        if local_ip is not None:
            bound = {n["NodeManagerAddress"] for n in ray.nodes()}
            if bound != {local_ip}:
                raise ChildStartError(f"the local Ray cluster took address {', '.join(sorted(bound))}, not "
                                      f"{local_ip}; set {HOST_IP_ENV} to the address it should use")

    def _join(self, address: str | None, host_ip: str | None, local_ip: str | None) -> None:
        """ray.init: the cluster at `address`, or a new local one at `local_ip`."""
        import ray

        if local_ip is not None:  # a local cluster: never on the external interface by default
            kwargs = {"_node_ip_address": local_ip, "include_dashboard": False}
        else:
            kwargs = {"_node_ip_address": host_ip} if host_ip else {}
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            # NOTE: a local cluster's processes (and so every actor) inherit os.environ
            with secrets_hidden() if local_ip else contextlib.nullcontext(), working_directory(JOIN_FROM):
                ray.init(address=address, namespace="bastion", logging_level=logging.WARNING,
                         configure_logging=False, **kwargs)
        except Exception as exc:  # NOTE: ray raises ConnectionError, RuntimeError, ValueError ...
            where = address or "a local cluster"
            raise ChildStartError(f"cannot connect to Ray at {where} (--ray-address / RAY_ADDRESS): "
                                  f"{exc}") from None
        finally:
            for sig, handler in handlers.items():  # NOTE: ray.init installs its own SIGTERM handler
                signal.signal(sig, handler)
        self.connected = True

    def gpus_per_worker(self, device: str) -> float:
        """GPUs for each tensor-parallel worker of a rank: --ray-gpus-per-rank, else one when the
        cluster has GPUs and `device` allows."""
        import ray

        gpus = self.ray_config.gpus_per_rank
        if gpus is None:
            wants_gpu = device in ("auto", "cuda")
            gpus = 1.0 if wants_gpu and ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        return gpus

    def driver_address(self) -> str:
        """Where actors reach this driver's API servers: --internal-host (or BASTION_HOST_IP), else
        this node's address as Ray sees it."""
        import ray

        return self.ray_config.driver_host or ray.util.get_node_ip_address()

    def leave(self) -> None:
        """Disconnect (a local cluster stops)."""
        if self.connected:
            import ray

            ray.shutdown()
            self.connected = False


JOIN_FROM = "/"  # the driver's working directory while it joins: what Ray's workers get on their path


@contextlib.contextmanager
def working_directory(path: str) -> Iterator[None]:
    """The process's working directory is `path` inside the block, and as it was after it."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


# NOTE: Ray swaps 127.0.0.1 (and localhost, ::1) for this host's external address; another
# loopback address is kept as given.
LOCAL_CLUSTER_DEFAULT = "127.0.0.2"
_RAY_LOCALHOSTS = ("127.0.0.1", "localhost", "::1")


def local_cluster_address(host_ip: str | None) -> str:
    """Where a local cluster's node lives: BASTION_HOST_IP, else a loopback address Ray keeps."""
    if host_ip and host_ip not in _RAY_LOCALHOSTS:
        return host_ip
    return LOCAL_CLUSTER_DEFAULT
