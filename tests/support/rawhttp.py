"""Raw HTTP for tests that must control every header and byte on the wire.

:func:`request` sends exactly the headers it is given (no Host, Accept-Encoding or
Content-Length is added) over http.client, optionally framing the body with
``Transfer-Encoding: chunked`` itself. :func:`send_truncated` writes a request head and
part of a body on a bare socket and then closes or half-closes it. :func:`s3_error` reads
the code and message out of an S3 error document.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import struct
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.message import Message

S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: Message
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def error_code(self) -> str | None:
        return s3_error(self.body)[0]

    @property
    def error_message(self) -> str | None:
        return s3_error(self.body)[1]

    def describe(self) -> str:
        head = "\n".join(f"{k}: {v}" for k, v in self.headers.items())
        return f"HTTP {self.status} {self.reason}\n{head}\n\n{self.body[:2000]!r}"


def s3_error(body: bytes) -> tuple[str | None, str | None]:
    """(Code, Message) of an S3 ``<Error>`` document, or (None, None) if it is not one."""
    if not body:
        return None, None
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None, None
    if strip_ns(root.tag) != "Error":
        return None, None
    code = message = None
    for child in root:
        tag = strip_ns(child.tag)
        if tag == "Code":
            code = child.text
        elif tag == "Message":
            message = child.text
    return code, message


def strip_ns(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def find_text(elem: ET.Element, path: str) -> str | None:
    """Find ``a/b`` ignoring the S3 namespace."""
    node: ET.Element | None = elem
    for part in path.split("/"):
        if node is None:
            return None
        node = next((c for c in node if strip_ns(c.tag) == part), None)
    return None if node is None else (node.text or "")


def find_all(elem: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in elem if strip_ns(c.tag) == name]


def _connection(host: str, port: int, tls: bool, timeout: float) -> http.client.HTTPConnection:
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
    return http.client.HTTPConnection(host, port, timeout=timeout)


def request(
    host: str,
    port: int,
    method: str,
    path: str,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    body: bytes | Iterable[bytes] | None = None,
    *,
    tls: bool = False,
    http_chunked: bool = False,
    timeout: float = 60.0,
) -> RawResponse:
    """Send one request with exactly ``headers``; read the whole response.

    With ``http_chunked`` the body pieces are framed as HTTP/1.1 chunks (the caller adds
    ``Transfer-Encoding: chunked``); otherwise the body is sent as is (the caller sets
    Content-Length).
    """
    conn = _connection(host, port, tls, timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        items = headers.items() if isinstance(headers, Mapping) else headers
        for name, value in items:
            conn.putheader(name, value)
        conn.endheaders()
        if body is not None:
            pieces: Iterable[bytes] = [body] if isinstance(body, bytes | bytearray) else body
            for piece in pieces:
                if http_chunked:
                    if piece:
                        conn.send(f"{len(piece):x}\r\n".encode("ascii") + bytes(piece) + b"\r\n")
                else:
                    conn.send(bytes(piece))
            if http_chunked:
                conn.send(b"0\r\n\r\n")
        resp = conn.getresponse()
        data = resp.read()
        return RawResponse(resp.status, resp.reason, resp.headers, data)
    finally:
        conn.close()


def send_truncated(
    host: str,
    port: int,
    head: bytes,
    body_part: bytes,
    *,
    mode: str = "half_close",
    timeout: float = 15.0,
) -> bytes:
    """Send a request head and part of its body, then stop.

    ``mode`` is ``half_close`` (shut the write side down and return whatever the server
    answers until it closes or ``timeout`` passes), ``keep_open`` (leave the connection
    open and return the first complete response, or what arrived before the server closed
    or ``timeout`` passed), ``close`` (close at once: FIN) or ``reset`` (close with
    SO_LINGER 0: RST). The last two return b"".
    """
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.sendall(head + body_part)
        if mode == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return b""
        if mode == "close":
            return b""
        if mode not in ("half_close", "keep_open"):
            raise ValueError(f"unknown mode {mode!r}")
        if mode == "half_close":
            sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        try:
            while not (mode == "keep_open" and _complete_response(bytes(received))):
                data = sock.recv(65536)
                if not data:
                    break
                received += data
        except (TimeoutError, ConnectionResetError):
            pass
        return bytes(received)
    finally:
        sock.close()


def _complete_response(data: bytes) -> bool:
    """True once ``data`` holds a final (non-1xx) response head and its Content-Length body."""
    while True:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = data[:end].decode("latin-1")
        status = head.split(" ", 2)[1] if " " in head else ""
        if status.startswith("1"):
            data = data[end + 4 :]
            continue
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        return len(data) - (end + 4) >= length


def parse_raw_response(data: bytes) -> RawResponse:
    """Parse the final response in raw bytes from :func:`send_truncated`."""
    while True:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            raise ValueError(f"no complete response head in {data[:200]!r}")
        lines = data[:end].decode("latin-1").split("\r\n")
        _version, status, *reason = lines[0].split(" ", 2)
        if status.startswith("1"):
            data = data[end + 4 :]
            continue
        msg = Message()
        for line in lines[1:]:
            name, _, value = line.partition(":")
            msg[name.strip()] = value.strip()
        return RawResponse(int(status), reason[0] if reason else "", msg, data[end + 4 :])


def request_head(method: str, path: str, headers: Mapping[str, str]) -> bytes:
    """Serialise an HTTP/1.1 request head (for :func:`send_truncated`)."""
    lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
