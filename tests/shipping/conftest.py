"""Fixtures for the shipping tests: a real registry on loopback, copies of the session's
signed bundle."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from registry_server import LoopbackRegistry


def start_registry(root: Path, tls: bool = False) -> LoopbackRegistry:
    try:
        return LoopbackRegistry(root, tls=tls).start()
    except RuntimeError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """docker-registry with htpasswd auth on 127.0.0.1, shared by a test module."""
    server = start_registry(tmp_path_factory.mktemp("registry"))
    yield server
    server.stop()


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path) -> dict[str, Path]:
    """The session's signed bundle (tree + zip) copied for a test that changes it."""
    out = tmp_path / "copy"
    out.mkdir()
    shutil.copytree(tiny_bundle["tree"], out / tiny_bundle["tree"].name)
    shutil.copy2(tiny_bundle["zip"], out / tiny_bundle["zip"].name)
    return {"tree": out / tiny_bundle["tree"].name, "zip": out / tiny_bundle["zip"].name, "out": out}


@pytest.fixture
def fresh_registry(tmp_path):
    """start(tls=False) -> a registry of this test's own (for one whose storage the test edits,
    or one with TLS); stopped when the test ends."""
    servers: list[LoopbackRegistry] = []

    def start(tls: bool = False) -> LoopbackRegistry:
        servers.append(start_registry(tmp_path / f"registry-{len(servers)}", tls=tls))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()
