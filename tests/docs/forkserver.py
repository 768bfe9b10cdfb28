"""A fork server that runs the docs' ``python ...`` commands without re-importing torch each time.

Started once per test session as ``python forkserver.py SOCKET``: it imports torch, torchvision,
torchmetrics, Lightning and timm (the third-party modules every ``train.py`` / ``infer.py`` /
``python -m lcam.*`` command and Python block of the docs imports) and ``lcam`` as a fresh
``import lcam`` does, never runs a tensor operation, then waits on the Unix socket ``SOCKET``.
lcam's other modules (``lcam.cli``, ``lcam.data``, ``lcam.training``, ...) are imported by each
command itself, so a block that uses ``lcam.data`` without importing it fails here as it would for
a user (about 0.3 s a command); only the third-party modules are shared.

The ``python`` on the docs blocks' ``PATH`` is ``shim.py``: it sends its argv, working folder,
environment and standard streams (file descriptors) here; the server forks, and the child runs the
command as ``python`` would (``script.py ARGS`` as ``__main__`` with the script's folder first on
``sys.path``, ``-m MODULE ARGS``, ``-c CODE ARGS``) and sends back the exit code. Each command is
its own process (signals, globals and the working folder do not leak between commands); only the
imports are shared. Importing torch and Lightning costs about 4 s of CPU per command otherwise,
most of the docs tests' time.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import runpy
import socket
import sys
import traceback

PREIMPORTED = ("numpy", "PIL.Image", "torch", "torchvision", "torchmetrics", "pytorch_lightning")
PREIMPORTED += ("timm", "lcam")


def run_python(argv: list[str]) -> int:
    """Run ``python *argv`` in this process (a fresh fork); returns the exit code."""
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            sys.path[0] = os.getcwd()
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        elif argv[0] == "-c":
            sys.argv = ["-c", *argv[2:]]
            sys.path[0] = ""
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
        else:
            sys.argv = list(argv)
            sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
            runpy.run_path(argv[0], run_name="__main__")
        code = 0
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    return code


def child(connection: socket.socket, request: dict, fds: list[int]) -> None:
    """In the forked child: take the caller's streams, folder and environment, run, answer."""
    for number, fd in enumerate(fds):
        os.dup2(fd, number)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    code = 1
    try:
        code = run_python(request["argv"])
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        connection.sendall(b"%d\n" % code)
        os._exit(code)


def receive(connection: socket.socket) -> tuple[dict, list[int]]:
    """One request: a JSON line sent with the caller's fds 0, 1 and 2."""
    data, fds, _, _ = socket.recv_fds(connection, 1 << 16, 3)
    while not data.endswith(b"\n"):
        more = connection.recv(1 << 16)
        if not more:
            raise ConnectionError("request cut short")
        data += more
    return json.loads(data), list(fds)


def serve(path: str) -> None:
    """Import the heavy modules once, then fork a child per request on the socket ``path``."""
    for name in PREIMPORTED:
        importlib.import_module(name)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(16)
    server.settimeout(2.0)
    parent = os.getppid()
    print("ready", flush=True)
    while True:
        try:
            connection, _ = server.accept()
        except TimeoutError:
            if os.getppid() != parent:  # the test session died without stopping us
                return
            continue
        connection.setblocking(True)
        request, fds = receive(connection)
        if os.fork() == 0:
            server.close()
            child(connection, request, fds)
        connection.close()
        for fd in fds:
            os.close(fd)
        while True:  # reap finished children
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break


if __name__ == "__main__":
    serve(sys.argv[1])
