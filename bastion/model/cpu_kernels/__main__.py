"""`python -m bastion.model.cpu_kernels`: build (or find) this machine's CPU kernels now.

`make serve` and `make test` run it after installing, so no server start (and no test) waits
for the compile. It prints where the kernels are, or why they are unavailable, and exits 0
either way: without them bastion runs on torch's kernels.
"""
from __future__ import annotations

import logging

from bastion.model.cpu_kernels.build import KernelsUnavailable, load_kernels


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        module = load_kernels()
    except KernelsUnavailable as exc:
        print(f"bastion CPU kernels: unavailable ({exc}); torch's kernels will be used")
        return
    print(f"bastion CPU kernels: {module.__file__}")


if __name__ == "__main__":
    main()
