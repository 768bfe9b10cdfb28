"""The ``python`` the docs' code blocks call: hands the command to ``forkserver.py``.

Sends argv, working folder, environment and the standard streams to the fork server named by
``LCAM_DOCS_FORKSERVER`` and exits with the command's exit code. Forms the server does not run
(an interpreter option other than ``-m`` / ``-c``, no argument) are run by the real interpreter
``LCAM_DOCS_PYTHON`` instead.
"""

from __future__ import annotations

import json
import os
import socket
import sys


def main() -> int:
    argv = sys.argv[1:]
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-m", "-c")):
        real = os.environ["LCAM_DOCS_PYTHON"]
        os.execv(real, [real, *argv])
    request = {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.connect(os.environ["LCAM_DOCS_FORKSERVER"])
    socket.send_fds(connection, [json.dumps(request).encode() + b"\n"], [0, 1, 2])
    answer = b""
    while not answer.endswith(b"\n"):
        more = connection.recv(64)
        if not more:
            print("shim: the fork server's child died without an exit code", file=sys.stderr)
            return 1
        answer += more
    return int(answer)


if __name__ == "__main__":
    sys.exit(main())
