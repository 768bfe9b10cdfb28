"""Refuse outbound network access in this process: the guard of the tests and of every process
they start.

``install()`` replaces ``socket.socket.connect``/``connect_ex`` and ``socket.getaddrinfo`` with
versions that raise for any address that is not the loopback (or a Unix socket), as on a
machine with no internet; loopback connections (DDP rendezvous, W&B's local service) still work.
``tests/conftest.py`` installs it in the pytest process and puts this folder first on
``PYTHONPATH``, so that ``sitecustomize.py`` here installs it in every Python subprocess a test
starts (``train.py``, ``infer.py``, their DDP ranks and loader workers).
"""

from __future__ import annotations

import ipaddress
import socket

MESSAGE = "network access is disabled in tests"

real_connect = socket.socket.connect
real_connect_ex = socket.socket.connect_ex
real_getaddrinfo = socket.getaddrinfo


def is_local(host: object) -> bool:
    """Whether ``host`` (an address's host part) is this machine: loopback, ``localhost``, the
    empty host, a Unix socket path, or not a host name at all."""
    if not isinstance(host, str):
        return True
    if host in ("localhost", "") or host.startswith("/"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check(sock: socket.socket, address: object) -> None:
    host = address[0] if isinstance(address, tuple) else address
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not is_local(host):
        raise OSError(f"{MESSAGE} (tried {address!r})")


def guarded_connect(self: socket.socket, address: object) -> object:
    """``socket.connect`` that refuses non-loopback addresses."""
    _check(self, address)
    return real_connect(self, address)


def guarded_connect_ex(self: socket.socket, address: object) -> object:
    """``socket.connect_ex`` that refuses non-loopback addresses (raises, as connect does)."""
    _check(self, address)
    return real_connect_ex(self, address)


def guarded_getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
    """``socket.getaddrinfo`` that refuses to resolve any name but the loopback's."""
    if not is_local(host):
        raise socket.gaierror(f"{MESSAGE} (tried to resolve {host!r})")
    return real_getaddrinfo(host, *args, **kwargs)


GUARDS = {
    (socket.socket, "connect"): guarded_connect,
    (socket.socket, "connect_ex"): guarded_connect_ex,
    (socket, "getaddrinfo"): guarded_getaddrinfo,
}


def install() -> None:
    """Install the guard in this process (idempotent)."""
    for (owner, name), guard in GUARDS.items():
        setattr(owner, name, guard)
