"""Fetch image bytes named by an event, refusing sources the worker must not reach.

Synchronous on purpose: it runs in the worker's thread pool next to `prepare_image`.
HTTP goes through `http.client` to the one address that passed the SSRF check, so a
second DNS answer (rebinding) cannot redirect the request to an internal host.

file:// URLs are confined to `ImageLimits.file_root` without a check-then-open race:

- The URL path is percent-decoded to bytes first; a NUL byte or a ".." component is
  refused, "." and empty components are skipped, and the rest must start with the root
  (as configured or as its real path). Symlinks in the root's own path are configuration.
- Below the root, every directory is opened relative to its parent's descriptor with
  O_NOFOLLOW | O_DIRECTORY, and the file with O_NOFOLLOW | O_NONBLOCK. **Symlinks
  anywhere inside the root are refused**, even ones pointing back inside it: a component
  swapped for a link while the path is walked is never followed.
- The opened file must be a regular file (fstat), so a directory, FIFO, socket or device
  is refused without blocking.
- **Hard links**: a hard link to an outside file cannot be told apart from the file by its
  path, so every file with st_nlink > 1 is refused. Deduplicated trees (`cp -l`, rsync
  --link-dest) must be copied into the root instead. Mount points inside the root are
  followed: mounting is the operator's business.
- Every failure is an ImageError: "forbidden_source" when the URL tries to leave the root
  (outside path, "..", NUL, symlink, hard link), "fetch_failed" when the file cannot be
  served (missing, not a regular file, permission denied, name too long, other errors).
"""

from __future__ import annotations

import base64
import errno
import functools
import http.client
import ipaddress
import os
import socket
import ssl
import stat
import time
from pathlib import Path
from urllib.parse import SplitResult, unquote_to_bytes, urlsplit

from llmflow.services.images.prepare import ImageError, ImageLimits, check_byte_size

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_READ_CHUNK = 64 * 1024

_O_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY: int = getattr(os, "O_DIRECTORY", 0)
_O_CLOEXEC: int = getattr(os, "O_CLOEXEC", 0)
# Without these the component-by-component open below cannot keep links out.
_CONFINED_OPEN = bool(_O_NOFOLLOW and _O_DIRECTORY) and os.open in os.supports_dir_fd
_DIR_FLAGS = os.O_RDONLY | _O_NOFOLLOW | _O_DIRECTORY | _O_CLOEXEC
# O_NONBLOCK: opening a FIFO must not hang the worker thread; O_NOCTTY: a terminal
# device must not become the worker's controlling terminal. fstat then refuses both.
_FILE_FLAGS = (
    os.O_RDONLY
    | _O_NOFOLLOW
    | _O_CLOEXEC
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
)
_FILE_TYPES = {
    stat.S_IFDIR: "directory",
    stat.S_IFIFO: "FIFO",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFSOCK: "socket",
}


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
    """Read a file:// URL confined to `limits.file_root`; see the module docstring."""
    if limits.file_root is None:
        raise ImageError(
            "forbidden_source",
            "file URLs are refused: this worker has no image root (set LLMFLOW_IMAGE_ROOT)",
        )
    if parts.netloc not in ("", "localhost"):
        raise ImageError("forbidden_source", f"file URL host {parts.netloc!r} is not local")
    if not _CONFINED_OPEN:
        raise ImageError(
            "forbidden_source", "file URLs need O_NOFOLLOW, O_DIRECTORY and dir_fd support"
        )
    raw = unquote_to_bytes(parts.path)
    shown = _show(raw)
    names = _names_below_root(raw, limits.file_root, shown)
    fd = _open_beneath(limits.file_root, names, shown)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = _FILE_TYPES.get(stat.S_IFMT(info.st_mode), "not a regular file")
            raise ImageError("fetch_failed", f"image file {shown} is a {kind}, not a regular file")
        if info.st_nlink > 1:
            raise ImageError(
                "forbidden_source",
                f"image file {shown} has {info.st_nlink} hard links; files with more than one"
                " link are refused because a link may lead to a file outside the image root",
            )
        with open(fd, "rb", closefd=False) as fh:
            data = fh.read(limits.max_bytes + 1)
    except OSError as exc:
        raise ImageError("fetch_failed", f"cannot read image file {shown}: {_why(exc)}") from exc
    finally:
        os.close(fd)
    check_byte_size(len(data), limits, partial=True)
    return data


def _names_below_root(raw: bytes, root: Path, shown: str) -> list[bytes]:
    """The decoded URL path's components below the root, checked before anything is opened."""
    if b"\0" in raw:
        raise ImageError("forbidden_source", f"file URL path {shown} contains a NUL byte")
    if not raw.startswith(b"/"):
        raise ImageError("forbidden_source", f"file URL path {shown} is not absolute")
    names = _components(raw)
    if b".." in names:
        raise ImageError(
            "forbidden_source", f"file URL path {shown} has a '..' component; it is refused"
        )
    # The root may be named as configured or by its real path (e.g. /tmp -> /private/tmp);
    # the root's own path is configuration and trusted, only what lies below it is not.
    try:
        bases = {os.path.abspath(root), os.path.realpath(root)}
    except ValueError as exc:  # a NUL byte in the configured root
        raise ImageError("fetch_failed", f"image root {str(root)!r} is invalid: {exc}") from exc
    for base in bases:
        prefix = _components(os.fsencode(base))
        if names[: len(prefix)] == prefix:
            return names[len(prefix) :]
    raise ImageError(
        "forbidden_source", f"{shown} is outside the image root {str(root)!r} (LLMFLOW_IMAGE_ROOT)"
    )


def _components(path: bytes) -> list[bytes]:
    # Empty components ("//") and "." name the same directory: skipped.
    return [name for name in path.split(b"/") if name not in (b"", b".")]


def _open_beneath(root: Path, names: list[bytes], shown: str) -> int:
    """Open root/names[0]/.../names[-1] one component at a time; return the file's fd.

    Each directory is opened relative to its parent's descriptor with O_NOFOLLOW, so a
    component swapped for a symlink between checks and opens is refused, never followed.
    """
    if not names:
        raise ImageError("fetch_failed", f"{shown} is the image root, not a file")
    try:
        fd = os.open(root, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    except (OSError, ValueError) as exc:
        why = _why(exc) if isinstance(exc, OSError) else str(exc)
        raise ImageError(
            "fetch_failed", f"cannot open the image root {str(root)!r}: {why}"
        ) from exc
    try:
        for name in names[:-1]:
            child = _open_at(name, _DIR_FLAGS, fd, shown)
            os.close(fd)
            fd = child
        return _open_at(names[-1], _FILE_FLAGS, fd, shown)
    finally:
        os.close(fd)


def _open_at(name: bytes, flags: int, dir_fd: int, shown: str) -> int:
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        raise _open_error(exc, name, dir_fd, shown) from exc


def _open_error(exc: OSError, name: bytes, dir_fd: int, shown: str) -> ImageError:
    # O_NOFOLLOW on a symlink fails with ELOOP (EMLINK on FreeBSD); with O_DIRECTORY as
    # well, Linux says ENOTDIR, which also means "a regular file used as a directory".
    if exc.errno in (errno.ELOOP, errno.EMLINK) or (
        exc.errno == errno.ENOTDIR and _is_symlink(name, dir_fd)
    ):
        return ImageError(
            "forbidden_source",
            f"image file {shown}: {_show(name)} is a symbolic link;"
            " links inside the image root are refused",
        )
    if exc.errno == errno.ENOENT:
        return ImageError("fetch_failed", f"image file {shown} does not exist")
    return ImageError(
        "fetch_failed", f"cannot open image file {shown} at {_show(name)}: {_why(exc)}"
    )


def _is_symlink(name: bytes, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _why(exc: OSError) -> str:
    if exc.strerror:
        return exc.strerror
    return os.strerror(exc.errno) if exc.errno else str(exc)


def _show(path: bytes, limit: int = 160) -> str:
    """A path for an error message: decoded like the OS would, quoted, cut if very long."""
    text = os.fsdecode(path)
    if len(text) > limit:
        text = f"{text[: limit // 2]}...{text[-limit // 4 :]}"
    return repr(text)


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
