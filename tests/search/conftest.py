"""Fixtures for the search and `--executor ray` tests: a real two-node Ray cluster on this machine."""
from __future__ import annotations

import pytest
from ray_cluster import RayCluster


@pytest.fixture(scope="module")
def ray_cluster():
    """A head node and a worker node of one CPU each (tests/search/ray_cluster.py), shared by a
    test module. The worker node stays dead after a test kills it, unless that test calls
    `start_worker_node()` (~5 s) for the module's later tests."""
    try:
        cluster = RayCluster().start()
    except RuntimeError as e:
        pytest.fail(str(e))
    yield cluster
    cluster.stop()
