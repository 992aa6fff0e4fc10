"""Fetch image bytes named by an event, refusing sources the worker must not reach.

Synchronous on purpose: it runs in the worker's thread pool next to `prepare_image`.
HTTP goes through `http.client` to the one address that passed the SSRF check, so a
second DNS answer (rebinding) cannot redirect the request to an internal host.
"""

from __future__ import annotations

import base64
import functools
import http.client
import ipaddress
import os
import socket
import ssl
import stat
import time
from pathlib import Path
from urllib.parse import SplitResult, urlsplit
from urllib.request import url2pathname

from llmflow.services.images.prepare import ImageError, ImageLimits, check_byte_size

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_READ_CHUNK = 64 * 1024


def load_image_bytes(source: str, limits: ImageLimits) -> bytes:
    """Return the raw bytes behind a file://, http:// or https:// URL, at most max_bytes."""
    try:
        parts = urlsplit(source.strip())
    except ValueError as exc:
        raise ImageError("forbidden_source", f"malformed image URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme == "file":
        return _load_file(parts, limits)
    if scheme in ("http", "https"):
        return _load_http(parts, scheme, limits)
    raise ImageError(
        "forbidden_source",
        f"image URL scheme {scheme or '(none)'!r} is not allowed (file, http, https)",
    )


def decode_inline(b64: str, limits: ImageLimits) -> bytes:
    """Decode strict base64 image data (no whitespace, no data: prefix)."""
    # Refuse before allocating the decoded copy: 4 base64 characters carry 3 bytes.
    check_byte_size(len(b64) // 4 * 3 - 2, limits)
    try:
        raw = base64.b64decode(b64, validate=True)
    except ValueError as exc:  # binascii.Error, or non-ASCII text
        raise ImageError("unreadable", f"inline image is not valid base64: {exc}") from exc
    check_byte_size(len(raw), limits)
    return raw


def _load_file(parts: SplitResult, limits: ImageLimits) -> bytes:
    if limits.file_root is None:
        raise ImageError("forbidden_source", "file URLs are disabled (no file_root configured)")
    if parts.netloc not in ("", "localhost"):
        raise ImageError("forbidden_source", f"file URL host {parts.netloc!r} is not local")
    path = Path(url2pathname(parts.path))
    if not path.is_absolute():
        raise ImageError("forbidden_source", f"file URL path {str(path)!r} is not absolute")
    root = limits.file_root.resolve()
    target = path.resolve()  # follows symlinks and "..", so a link cannot lead outside
    if not target.is_relative_to(root):
        raise ImageError("forbidden_source", f"{path} is outside the image root {root}")
    # O_NOFOLLOW: the last component cannot be swapped for a symlink after the check;
    # O_NONBLOCK: opening a FIFO must not hang the worker thread.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(target, flags)
    except FileNotFoundError as exc:
        raise ImageError("fetch_failed", f"image file {path} does not exist") from exc
    except OSError as exc:
        raise ImageError("fetch_failed", f"cannot open image file {path}: {exc.strerror}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageError("fetch_failed", f"{path} is not a regular file")
        with open(fd, "rb", closefd=False) as fh:
            data = fh.read(limits.max_bytes + 1)
    except OSError as exc:
        raise ImageError("fetch_failed", f"cannot read image file {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    check_byte_size(len(data), limits, partial=True)
    return data


def _load_http(parts: SplitResult, scheme: str, limits: ImageLimits) -> bytes:
    where = f"{scheme}://{parts.netloc}{parts.path}"  # no query: it may carry tokens
    host = parts.hostname
    if not host:
        raise ImageError("forbidden_source", f"image URL {where!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise ImageError("forbidden_source", "credentials in image URLs are not supported")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError as exc:
        raise ImageError("forbidden_source", f"image URL {where!r}: {exc}") from exc

    addresses = _resolve_checked(host, port, limits.allow_private_hosts)
    deadline = time.monotonic() + limits.fetch_timeout_s
    conn = _connect_first(scheme, addresses, port, host, limits.fetch_timeout_s, where)
    sock = conn.sock  # kept: http.client drops conn.sock once the response owns the stream
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {
        "Host": parts.netloc,
        "User-Agent": "llmflow-image-fetch/1",
        "Accept": "image/*",
        "Accept-Encoding": "identity",
        "Connection": "close",
    }
    try:
        conn.request("GET", target, headers=headers)
        resp = conn.getresponse()
        if 300 <= resp.status < 400:
            raise ImageError(
                "fetch_failed", f"{where} answered HTTP {resp.status}: redirects are refused"
            )
        if resp.status != 200:
            raise ImageError("fetch_failed", f"{where} answered HTTP {resp.status} {resp.reason}")
        announced = resp.getheader("Content-Length", "")
        if announced.isdigit():
            check_byte_size(int(announced), limits)
        return _read_capped(resp, sock, limits, deadline, where)
    except (OSError, http.client.HTTPException) as exc:
        # Timeouts, resets, TLS and certificate failures all land here.
        raise ImageError(
            "fetch_failed", f"cannot fetch {where}: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        conn.close()


def _read_capped(
    resp: http.client.HTTPResponse,
    sock: socket.socket,
    limits: ImageLimits,
    deadline: float,
    where: str,
) -> bytes:
    """Read the body in single socket reads so a trickling server hits the deadline."""
    chunks: list[bytes] = []
    total = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ImageError(
                "fetch_failed", f"{where} took longer than {limits.fetch_timeout_s:g}s"
            )
        sock.settimeout(remaining)
        chunk = resp.read1(min(_READ_CHUNK, limits.max_bytes + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        check_byte_size(total, limits, partial=True)


def _resolve_checked(host: str, port: int, allow_private: bool) -> list[str]:
    """Resolve once; return the addresses that may be contacted, in resolver order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ImageError("fetch_failed", f"cannot resolve {host!r}: {exc}") from exc
    allowed: list[str] = []
    refused: list[str] = []
    for family, _, _, _, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        addr = str(sockaddr[0])
        reason = None if allow_private else refusal_reason(ipaddress.ip_address(addr))
        if reason is None:
            allowed.append(addr)
        else:
            refused.append(f"{addr} ({reason})")
    if not allowed:
        raise ImageError(
            "forbidden_source",
            f"{host!r} resolves only to addresses that are not public: {', '.join(refused)}",
        )
    return allowed


def _connect_first(
    scheme: str, addresses: list[str], port: int, host: str, timeout: float, where: str
) -> http.client.HTTPConnection:
    """Connect (and for https, verify) to the first checked address that answers."""
    error: OSError | None = None
    for ip in addresses:
        conn = _connection(scheme, ip, port, host, timeout)
        try:
            conn.connect()
        except OSError as exc:
            conn.close()
            error = exc
            continue
        return conn
    raise ImageError(
        "fetch_failed", f"cannot connect to {where}: {type(error).__name__}: {error}"
    ) from error


def refusal_reason(ip: IPAddress) -> str | None:
    """Why `ip` must not be fetched from by default, or None for a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        # Judge IPv4 addresses wrapped in IPv6 by the IPv4 address they lead to.
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    checks = (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.is_multicast, "multicast"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
        (not ip.is_global, "not globally routable"),
    )
    return next((label for hit, label in checks if hit), None)


class _PinnedHTTPSConnection(http.client.HTTPConnection):
    """HTTPS to an already checked IP; the certificate is verified against the URL host."""

    default_port = 443

    def __init__(
        self, ip: str, port: int, *, server_hostname: str, context: ssl.SSLContext, timeout: float
    ) -> None:
        super().__init__(ip, port, timeout=timeout)
        self._server_hostname = server_hostname
        self._ssl_context = context

    def connect(self) -> None:
        super().connect()
        self.sock = self._ssl_context.wrap_socket(self.sock, server_hostname=self._server_hostname)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle costs milliseconds; a configured context is thread-safe.
    return ssl.create_default_context()


def _connection(
    scheme: str, ip: str, port: int, host: str, timeout: float
) -> http.client.HTTPConnection:
    if scheme == "https":
        return _PinnedHTTPSConnection(
            ip, port, server_hostname=host, context=_ssl_context(), timeout=timeout
        )
    return http.client.HTTPConnection(ip, port, timeout=timeout)
