"""Leader addresses, the one small type the TPU modules share (lowest module of ``venue.tpu``).

A leader's TPU QUIC endpoint is an ``(ip, port)`` pair: ``leaders`` finds them, ``connections``
keys its cache by them, ``sender`` logs them. Nothing here does I/O.
"""
from __future__ import annotations

Address = tuple[str, int]


def _format_addr(addr: Address) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
