"""The state of one engine rank: one vocabulary wherever the rank runs.

A rank is a rank whether it is a child process of the launcher or of a headless node
(launch/local_ranks.py), a Ray actor (launch/ray/ranks.py) or a whole server under the
supervisor (launch/supervisor/supervised_rank.py). API servers keep the same states for the
ranks they send to (server/engine_client.py), and `RankDown` carries the state that comes next.
The values are the strings `/health`, `/ranks` and the logs show.

    (Ray) placing --its node has room--> starting --handshake / first probe passes--> ready
             ^                              |                                           |
             |                        not ready in time              lost: exited, actor or node died
             |                              v                        (supervised: unhealthy -> stopped)
             +-----due after backoff---- restarting <---------------------------------+
                   (Ray: no room -> waiting -> retried)  |
                                                         +--out of restarts--> failed

* Local and headless ranks go restarting -> starting (a new child); Ray ranks restarting ->
  placing (a new placement group on a node alive then); a supervised rank that fails its probes
  turns unhealthy and is stopped, then restarts like any lost rank.
* waiting: no place to run yet; for a Ray rank, no node has room (retried every few seconds);
  for an API server, a rank on another node that has not registered yet.
* stopped: a supervised rank the supervisor stopped while draining (never restarted).
* failed is for good: the rank used up its restarts within the window (launch/restart.py).
"""
from __future__ import annotations

import enum


class RankState(enum.StrEnum):
    STARTING = "starting"
    PLACING = "placing"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    RESTARTING = "restarting"
    WAITING = "waiting"
    FAILED = "failed"
    STOPPED = "stopped"
