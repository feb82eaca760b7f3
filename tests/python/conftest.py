"""Pytest fixtures for Shoal's Python (pymongo) tests.

The `cluster` fixture runs `shoal up` (config server, 2 shards, router, shards already added) in a
temporary directory on free ports and yields its connection string; the whole process group is
stopped afterwards, so no server outlives the test session. Binaries come from $SHOAL_BIN_DIR.
"""

import os
import random
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

READY_PREFIX = "Shoal cluster ready:"
READY_TIMEOUT_S = 120
STOP_TIMEOUT_S = 20
SHARDS = 2
# Ports below the kernel's ephemeral range, so client sockets cannot take them meanwhile.
PORT_LOW, PORT_HIGH = 12_000, 32_000
PORT_ATTEMPTS_MAX = 2_000
# `shoal up`'s default: every set has 3 members.
MEMBERS = 3
# Router, config members, then each shard's members (see `shoal up`'s port layout).
PORT_BLOCK = 1 + MEMBERS * (1 + SHARDS)


def bin_dir() -> Path:
    configured = os.environ.get("SHOAL_BIN_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "target" / "release"


def port_is_free(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port_block(count: int) -> int:
    for _ in range(PORT_ATTEMPTS_MAX):
        base = random.randrange(PORT_LOW, PORT_HIGH - count)
        if all(port_is_free(port) for port in range(base, base + count)):
            return base
    raise RuntimeError(f"no block of {count} free ports")


class ShoalUp:
    """A running `shoal up`, its ports and its connection string."""

    def __init__(self, directory: Path, log: Path):
        self.base = free_port_block(PORT_BLOCK)
        self.log = log
        binary = bin_dir() / "shoal"
        if not binary.is_file():
            raise RuntimeError(f"{binary} not found: build with cargo build --release or set SHOAL_BIN_DIR")
        self.process = subprocess.Popen(
            [str(binary), "up", "--dir", str(directory), "--port", str(self.base), "--shards", str(SHARDS)],
            stdout=subprocess.PIPE,
            stderr=open(log, "ab"),
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self.uri = self._wait_ready()
        self.router_port = self.base
        self.config_port = self.base + 1
        # Shard i's members: PORT+1+M*(i+1) onwards.
        self.shard_members = [
            [self.base + 1 + MEMBERS * (i + 1) + j for j in range(MEMBERS)] for i in range(SHARDS)
        ]

    def shard_uri(self, index: int) -> str:
        """The replica-set URI of shard `index`: pymongo discovers its primary."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.shard_members[index])
        return f"mongodb://{hosts}/?replicaSet=shard{index}"

    def _wait_ready(self) -> str:
        ready = threading.Event()
        found = {}

        def drain():
            # Keeps reading after the ready line so shoal up never blocks on a full pipe.
            for line in self.process.stdout:
                if line.startswith(READY_PREFIX) and not ready.is_set():
                    found["uri"] = line[len(READY_PREFIX):].strip()
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        started = time.monotonic()
        if not ready.wait(READY_TIMEOUT_S) or "uri" not in found:
            self.stop()
            raise RuntimeError(f"shoal up not ready after {time.monotonic() - started:.1f}s; log:\n{self.log_tail()}")
        return found["uri"]

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the group (nothing, if shoal up stopped its children) is killed.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.process.poll() is None:
            self.process.wait(STOP_TIMEOUT_S)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    directory = tmp_path_factory.mktemp("shoal")
    up = ShoalUp(directory / "cluster", directory / "shoal-up.log")
    try:
        yield up
    finally:
        up.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    up = item.funcargs.get("cluster") if hasattr(item, "funcargs") else None
    if report.failed and up is not None:
        report.sections.append(("shoal up log tail", up.log_tail()))
