"""Why a port cannot be listened on, in words that name the flag to change."""

from __future__ import annotations

import errno
import socket


def address(host: str, port: int) -> str:
    """``host:port`` as gRPC reads it and URLs write it: IPv6 in brackets ("[::1]:8500")."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_error(host: str, port: int) -> OSError | None:
    """Tries to bind ``host:port`` as a listening server would; the error, or None.

    gRPC reports a failed bind only as "Failed to bind"; this finds the reason.

    Args:
        host: A host name or address (IPv6 without brackets, as settings keep it).
        port: The port.
    """
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        return exc
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            # As gRPC and http.server do: a port left in TIME_WAIT is not "in use".
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                return exc
    return None


def bind_problem(error: OSError, port_flag: str, host_flag: str) -> str:
    """What to tell the user about a failed bind, naming the flag that fixes it.

    Args:
        error: The error of the bind (or of resolving the host).
        port_flag: The flag that sets the port, e.g. "--port".
        host_flag: The flag that sets the address, e.g. "--host".
    """
    if error.errno == errno.EADDRINUSE:
        return f"the port is in use (another server?); choose another with {port_flag}"
    if error.errno == errno.EACCES:
        return f"no permission to use the port (below 1024?); choose another with {port_flag}"
    if error.errno == errno.EADDRNOTAVAIL:
        return f"not an address of this host; choose another with {host_flag}"
    if isinstance(error, socket.gaierror):
        return f"unknown host ({error.strerror}); choose another with {host_flag}"
    return f"{error.strerror or error}; check {host_flag} and {port_flag}"
