"""Just enough of the MongoDB wire protocol (OP_MSG + BSON) to send a ``hello``."""

import itertools
import socket
import struct
from typing import Any

_OP_MSG = 2013
_request_ids = itertools.count(1)


def _cstring(value: str) -> bytes:
    return value.encode() + b"\x00"


def _encode_hello() -> bytes:
    elements = b"\x10" + _cstring("hello") + struct.pack("<i", 1)
    elements += b"\x02" + _cstring("$db") + struct.pack("<i", len("admin") + 1) + _cstring("admin")
    return struct.pack("<i", 4 + len(elements) + 1) + elements + b"\x00"


_FIXED_SIZES = {0x01: 8, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16}


def _decode(buf: bytes, pos: int = 0) -> dict[str, Any]:
    """Decode a BSON document; values of types this module never needs come back as None."""
    (length,) = struct.unpack_from("<i", buf, pos)
    end = pos + length - 1
    pos += 4
    doc: dict[str, Any] = {}
    while pos < end:
        kind = buf[pos]
        name_end = buf.index(b"\x00", pos + 1)
        name = buf[pos + 1 : name_end].decode("utf-8", "replace")
        pos = name_end + 1
        value: Any = None
        if kind == 0x01:
            (value,) = struct.unpack_from("<d", buf, pos)
        elif kind == 0x02:
            (n,) = struct.unpack_from("<i", buf, pos)
            value = buf[pos + 4 : pos + 4 + n - 1].decode("utf-8", "replace")
            pos += 4 + n
            doc[name] = value
            continue
        elif kind in (0x03, 0x04):
            (n,) = struct.unpack_from("<i", buf, pos)
            sub = _decode(buf, pos)
            value = sub if kind == 0x03 else list(sub.values())
            pos += n
            doc[name] = value
            continue
        elif kind == 0x05:
            (n,) = struct.unpack_from("<i", buf, pos)
            pos += 4 + 1 + n
            doc[name] = None
            continue
        elif kind == 0x08:
            value = buf[pos] != 0
        elif kind == 0x10:
            (value,) = struct.unpack_from("<i", buf, pos)
        elif kind in (0x09, 0x12):
            (value,) = struct.unpack_from("<q", buf, pos)
        elif kind not in _FIXED_SIZES:
            break  # a type we do not need; stop rather than misparse
        pos += _FIXED_SIZES[kind]
        doc[name] = value
    return doc


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed by server")
        chunks += chunk
    return bytes(chunks)


def hello(host: str, port: int, timeout: float = 2.0) -> dict[str, Any]:
    """Send ``{hello: 1}`` to a MongoDB-wire server and return the (partly decoded) reply."""
    body = struct.pack("<I", 0) + b"\x00" + _encode_hello()
    request_id = next(_request_ids) & 0x7FFFFFFF
    header = struct.pack("<iiii", 16 + len(body), request_id, 0, _OP_MSG)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(header + body)
        length, _, response_to, opcode = struct.unpack("<iiii", _recv_exact(sock, 16))
        payload = _recv_exact(sock, length - 16)
    if opcode != _OP_MSG or response_to != request_id:
        raise ConnectionError(f"unexpected reply (opcode {opcode}, responseTo {response_to})")
    if payload[4] != 0:
        raise ConnectionError(f"unexpected OP_MSG section kind {payload[4]}")
    return _decode(payload, 5)
