"""Locked, isolated per-release Python environments.

- :mod:`officegrid.envs.lock`: the publisher's side (``release create``): resolve a release's
  ``requirements.txt`` / ``pyproject.toml`` dependencies into a lock with hashes, pick the wheels
  to ship, and compute the environment's identity (its *env hash*).
- :mod:`officegrid.envs.build`: the worker's side: one virtual environment per env hash under
  ``<work_dir>/envs/``, built in place from the lock, marked complete last, shared by every
  release with the same lock.

Layout inside a release (files added by ``release create``, never written into the user's
directory): ``.officegrid/lock.txt`` (pip requirements format, ``name==version`` pins with
``--hash=sha256:`` lines) and ``.officegrid/wheels/`` (the wheels ``--wheelhouse`` shipped).
"""

from __future__ import annotations

LOCK_DIR = ".officegrid"
LOCK_PATH = ".officegrid/lock.txt"
WHEELS_PATH = ".officegrid/wheels"
