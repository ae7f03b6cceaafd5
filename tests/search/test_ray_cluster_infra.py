"""The two-node Ray cluster of tests/search/ray_cluster.py is real: a driver sees both nodes
alive and runs tasks on each, and a task that was running on the worker node when that node
died is run again on the head node.

The driver is this pytest process (ray.init / ray.shutdown around each test): connecting
takes ~0.1-1 s, and ray.shutdown leaves no thread behind.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import edgepack

pytestmark = pytest.mark.timeout(240)      # the cluster takes 10-30 s to start on a busy 2-core box


@pytest.fixture
def driver(ray_cluster):
    """This process as a driver of the cluster (attached to the head node)."""
    ray.init(address=ray_cluster.address, log_to_driver=False, logging_level="WARNING")
    yield ray_cluster
    ray.shutdown()


def wait_for(predicate, what: str, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        time.sleep(0.05)


@ray.remote(num_cpus=1)
def meet(rendezvous: str, me: int, others: int) -> dict:
    """Holds its node's only CPU until `others` more tasks have started: running together, they
    must be on different nodes. (Self-contained: Ray pickles a helper of this module by
    reference, and workers cannot import a test module.)"""
    Path(rendezvous, str(me)).touch()
    deadline = time.monotonic() + 60
    while len(os.listdir(rendezvous)) <= others:
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {me}: the other tasks did not start within 60 s")
        time.sleep(0.05)
    return {"node": ray.get_runtime_context().get_node_id(), "edgepack": edgepack.__file__,
            "omp": os.environ.get("OMP_NUM_THREADS"), "cwd": os.getcwd()}


@ray.remote(num_cpus=1, max_retries=2)
def mark_then_work(markers: str, stall_on: str) -> str:
    """Leaves a marker named after its node; on node `stall_on` it then waits to be killed."""
    node = ray.get_runtime_context().get_node_id()
    Path(markers, f"{node}.{os.getpid()}").touch()
    if node == stall_on:
        time.sleep(120)
    return node


def alive_nodes() -> dict[str, dict]:
    return {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}


def head_and_worker() -> tuple[str, str]:
    nodes = alive_nodes()
    assert len(nodes) == 2, nodes
    head = next(node for node, info in nodes.items() if "node:__internal_head__" in info["Resources"])
    return head, next(node for node in nodes if node != head)


def test_driver_sees_both_nodes_and_runs_tasks_on_each(driver, tmp_path):
    head, worker = head_and_worker()
    assert ray.get_runtime_context().get_node_id() == head
    assert ray.cluster_resources()["CPU"] == 2

    results = ray.get([meet.remote(str(tmp_path), i, 1) for i in range(2)], timeout=60)
    assert {r["node"] for r in results} == {head, worker}
    for r in results:     # task workers import this test's edgepack, run one thread, and start elsewhere
        assert r["edgepack"] == edgepack.__file__
        assert r["omp"] == "1"
        assert Path(r["cwd"]) != Path.cwd()


def test_task_on_a_dying_node_is_retried_on_the_head(driver, tmp_path):
    head, worker = head_and_worker()
    first_attempt_on_worker = NodeAffinitySchedulingStrategy(worker, soft=True)
    ref = mark_then_work.options(scheduling_strategy=first_attempt_on_worker).remote(str(tmp_path), worker)
    wait_for(lambda: list(tmp_path.glob(f"{worker}.*")) or ray.wait([ref], timeout=0)[0],
             "the first attempt to start on the worker node")
    assert not ray.wait([ref], timeout=0)[0], f"the task ended before the kill: {ray.get(ref)}"

    driver.kill_worker_node()
    assert ray.get(ref, timeout=60) == head
    assert sorted(p.name.split(".")[0] for p in tmp_path.iterdir()) == sorted([head, worker])
    wait_for(lambda: worker not in alive_nodes(), "the GCS to mark the killed node dead", timeout_s=30)
