"""The no-network guard holds in the pytest process and in the Python subprocesses tests start
(as they start train.py and infer.py), while loopback connections still work."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MESSAGE = "network access is disabled in tests"
# 192.0.2.1 is TEST-NET-1 (RFC 5737): never routed, so without the guard a connection fails
# with a different message (unreachable, timed out) instead of reaching anything.
SCRIPT = """
import json, socket, subprocess, sys

port, generation = int(sys.argv[1]), int(sys.argv[2])
with socket.create_connection(("127.0.0.1", port), timeout=10) as loopback:
    loopback.sendall(b"hello %d" % generation)
attempts = {
    "connect": lambda: socket.create_connection(("192.0.2.1", 80), timeout=2),
    "connect_ex": lambda: socket.socket().connect_ex(("192.0.2.1", 80)),
    "getaddrinfo": lambda: socket.getaddrinfo("example.com", 443),
}
outcome = {}
for name, attempt in attempts.items():
    try:
        outcome[name] = f"not refused: {attempt()!r}"
    except OSError as error:
        outcome[name] = str(error)
print(json.dumps(outcome), flush=True)
if generation == 0:  # re-launched with the inherited environment, as Lightning starts rank 1
    subprocess.run([sys.executable, __file__, str(port), "1"], check=True)
"""


def test_guard_refuses_outbound_network_in_this_process() -> None:
    with pytest.raises(OSError, match=MESSAGE):
        socket.create_connection(("192.0.2.1", 80), timeout=2)
    with pytest.raises(socket.gaierror, match=MESSAGE):
        socket.getaddrinfo("example.com", 443)


def test_guard_holds_in_subprocesses_and_loopback_works(tmp_path: Path) -> None:
    script = tmp_path / "client.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}  # as tests do
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(30)
        port = server.getsockname()[1]
        result = subprocess.run(
            [sys.executable, str(script), str(port), "0"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        received = []
        for _ in range(2):  # the child's and the grandchild's loopback connections
            connection, _address = server.accept()
            with connection:
                received.append(connection.recv(64))
    assert sorted(received) == [b"hello 0", b"hello 1"]
    outcomes = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(outcomes) == 2
    for outcome in outcomes:
        assert set(outcome) == {"connect", "connect_ex", "getaddrinfo"}
        for name, text in outcome.items():
            assert MESSAGE in text, (name, text)
