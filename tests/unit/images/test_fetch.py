"""load_image_bytes / decode_inline: sources, SSRF guard, redirects, size caps, file:// jail."""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import errno
import ipaddress
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from llmflow.services.images import ImageError, ImageLimits, decode_inline, fetch, load_image_bytes
from llmflow.services.images.fetch import refusal_reason

BODY = b"\xff\xd8\xff" + bytes(range(256)) * 40  # content is not decoded here
LOCAL = ImageLimits(allow_private_hosts=True, fetch_timeout_s=5)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/img.jpg":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)
        elif self.path == "/chunked.jpg":  # no Content-Length: the cap must hold anyway
            self.protocol_version = "HTTP/1.0"
            self.send_response(200)
            self.end_headers()
            self.wfile.write(BODY)
        elif self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/img.jpg")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_error(404)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _serve(server: ThreadingHTTPServer) -> Iterator[int]:
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def http_port() -> Iterator[int]:
    yield from _serve(ThreadingHTTPServer(("127.0.0.1", 0), _Handler))


def expect_error(source: str, kind: str, limits: ImageLimits = LOCAL) -> str:
    with pytest.raises(ImageError) as info:
        load_image_bytes(source, limits)
    assert info.value.kind == kind, str(info.value)
    return str(info.value)


def test_http_to_loopback_is_refused_by_default(http_port: int) -> None:
    message = expect_error(
        f"http://127.0.0.1:{http_port}/img.jpg", "forbidden_source", ImageLimits()
    )
    assert "loopback" in message
    expect_error(f"http://localhost:{http_port}/img.jpg", "forbidden_source", ImageLimits())


def test_http_to_loopback_works_when_private_hosts_allowed(http_port: int) -> None:
    assert load_image_bytes(f"http://127.0.0.1:{http_port}/img.jpg", LOCAL) == BODY
    assert load_image_bytes(f"http://localhost:{http_port}/chunked.jpg", LOCAL) == BODY


def test_redirect_is_refused(http_port: int) -> None:
    message = expect_error(f"http://127.0.0.1:{http_port}/moved", "fetch_failed")
    assert "redirects are refused" in message


def test_http_error_status_fails(http_port: int) -> None:
    assert "404" in expect_error(f"http://127.0.0.1:{http_port}/nope", "fetch_failed")


@pytest.mark.parametrize("path", ["/img.jpg", "/chunked.jpg"])
def test_http_body_over_max_bytes_is_too_large(http_port: int, path: str) -> None:
    limits = ImageLimits(allow_private_hosts=True, max_bytes=1000)
    expect_error(f"http://127.0.0.1:{http_port}{path}", "too_large", limits)


def test_connection_refused_fails() -> None:
    with socket.socket() as probe:  # a loopback port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    expect_error(f"http://127.0.0.1:{port}/img.jpg", "fetch_failed")


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("169.254.169.254", "link-local"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("100.64.0.1", "not globally routable"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("2002:7f00:1::", "loopback"),
        ("64:ff9b::a00:1", "private"),
        ("93.184.216.34", None),
        ("2606:4700::1111", None),
    ],
)
def test_refusal_reason(address: str, reason: str | None) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("source", ["ftp://example.org/a.jpg", "gopher://x/", "data:,x", "a.jpg"])
def test_other_schemes_are_forbidden(source: str) -> None:
    expect_error(source, "forbidden_source")


def test_credentials_in_url_are_forbidden() -> None:
    expect_error("http://user:pw@127.0.0.1/a.jpg", "forbidden_source")


def test_file_url_inside_root_works(tmp_path: Path) -> None:
    (tmp_path / "a b.jpg").write_bytes(BODY)
    limits = ImageLimits(file_root=tmp_path)
    assert load_image_bytes((tmp_path / "a b.jpg").as_uri(), limits) == BODY


def test_file_url_outside_root_is_forbidden(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.jpg").write_bytes(BODY)
    (root / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    limits = ImageLimits(file_root=root)
    outside = expect_error((tmp_path / "secret.jpg").as_uri(), "forbidden_source", limits)
    assert "LLMFLOW_IMAGE_ROOT" in outside  # the dead letter names the setting
    expect_error(f"file://{root}/../secret.jpg", "forbidden_source", limits)
    expect_error((root / "link.jpg").as_uri(), "forbidden_source", limits)


def test_file_urls_are_refused_without_root(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(BODY)
    refused = expect_error((tmp_path / "a.jpg").as_uri(), "forbidden_source", ImageLimits())
    assert "LLMFLOW_IMAGE_ROOT" in refused


def test_file_missing_or_not_regular_fails(tmp_path: Path) -> None:
    limits = ImageLimits(file_root=tmp_path)
    expect_error((tmp_path / "missing.jpg").as_uri(), "fetch_failed", limits)
    (tmp_path / "dir").mkdir()
    expect_error((tmp_path / "dir").as_uri(), "fetch_failed", limits)


def test_file_over_max_bytes_is_too_large(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(BODY)
    limits = ImageLimits(file_root=tmp_path, max_bytes=100)
    assert "more than 100 bytes" in expect_error((tmp_path / "a.jpg").as_uri(), "too_large", limits)


def test_decode_inline() -> None:
    assert decode_inline(base64.b64encode(BODY).decode(), LOCAL) == BODY
    for bad in ("not base64!", "QUJD\nREVG", "é"):
        with pytest.raises(ImageError) as info:
            decode_inline(bad, LOCAL)
        assert info.value.kind == "unreadable"
    with pytest.raises(ImageError) as info:
        decode_inline(base64.b64encode(BODY).decode(), ImageLimits(max_bytes=100))
    assert info.value.kind == "too_large"


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, ssl.SSLContext]]:
    """HTTPS on 127.0.0.1 with a self-signed certificate valid for "localhost" only."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl command not available")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    server.socket = server_ctx.wrap_socket(server.socket, server_side=True)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    for port in _serve(server):
        yield port, client_ctx


def test_https_checks_certificate_against_host_name(
    tls_server: tuple[int, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, client_ctx = tls_server
    expect_error(f"https://localhost:{port}/img.jpg", "fetch_failed")  # CA not trusted
    monkeypatch.setattr(fetch, "_ssl_context", lambda: client_ctx)
    assert load_image_bytes(f"https://localhost:{port}/img.jpg", LOCAL) == BODY
    message = expect_error(f"https://127.0.0.1:{port}/img.jpg", "fetch_failed")
    assert "certificate" in message.lower() or "hostname" in message.lower()


# --- file:// confinement: every odd path is an ImageError, links never lead outside ---


@pytest.fixture
def jail(tmp_path: Path) -> tuple[Path, Path, ImageLimits]:
    """root/ (the image root, with sub/a.jpg) next to outside/secret.jpg."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "sub" / "a.jpg").write_bytes(BODY)
    (outside / "secret.jpg").write_bytes(b"SECRET")
    return root, outside, ImageLimits(file_root=root)


@pytest.mark.parametrize("tail", ["sub/a%00.jpg", "sub/a.jpg%00.png", "%00/sub/a.jpg"])
def test_file_url_with_nul_byte_is_forbidden(
    jail: tuple[Path, Path, ImageLimits], tail: str
) -> None:
    root, _, limits = jail
    assert "NUL" in expect_error(f"file://{root}/{tail}", "forbidden_source", limits)


@pytest.mark.parametrize(
    "tail",
    [
        "sub/../sub/a.jpg",  # would stay inside, refused all the same
        "sub/%2E%2E/%2e%2e/outside/secret.jpg",
        "sub%2F..%2F..%2Foutside%2Fsecret.jpg",
        "..%2Foutside/secret.jpg",
    ],
)
def test_file_url_with_dotdot_is_forbidden(jail: tuple[Path, Path, ImageLimits], tail: str) -> None:
    root, _, limits = jail
    assert "'..'" in expect_error(f"file://{root}/{tail}", "forbidden_source", limits)


def test_file_url_absolute_escapes_are_forbidden(jail: tuple[Path, Path, ImageLimits]) -> None:
    root, outside, limits = jail
    expect_error((outside / "secret.jpg").as_uri(), "forbidden_source", limits)
    expect_error("file:///etc/passwd", "forbidden_source", limits)
    expect_error(f"file://{root}x/sub/a.jpg", "forbidden_source", limits)  # prefix, not parent
    expect_error("file:sub/a.jpg", "forbidden_source", limits)  # relative
    expect_error(f"file://example.org{root}/sub/a.jpg", "forbidden_source", limits)
    # An encoded "/" only makes more components below the root: root/etc/passwd.
    expect_error(f"file://{root}/%2Fetc%2Fpasswd", "fetch_failed", limits)


def test_file_url_empty_and_dot_components_are_skipped(
    jail: tuple[Path, Path, ImageLimits],
) -> None:
    root, _, limits = jail
    assert load_image_bytes(f"file://{root}//./sub//a.jpg", limits) == BODY
    assert load_image_bytes(f"file://localhost{root}/sub/a.jpg", limits) == BODY
    assert load_image_bytes(f"file:///{root}/sub/%61.jpg", limits) == BODY


def test_file_url_non_utf8_name_is_served(jail: tuple[Path, Path, ImageLimits]) -> None:
    root, _, limits = jail
    with open(os.path.join(os.fsencode(root), b"\xff.jpg"), "wb") as fh:
        fh.write(BODY)
    assert load_image_bytes(f"file://{root}/%FF.jpg", limits) == BODY


def test_file_root_may_be_named_through_a_link(jail: tuple[Path, Path, ImageLimits]) -> None:
    root, _, _ = jail
    alias = root.parent / "alias"
    alias.symlink_to(root)
    limits = ImageLimits(file_root=alias)  # the root's own path is configuration
    assert load_image_bytes(f"file://{alias}/sub/a.jpg", limits) == BODY
    assert load_image_bytes(f"file://{root}/sub/a.jpg", limits) == BODY


def test_symlinks_inside_the_root_are_refused(jail: tuple[Path, Path, ImageLimits]) -> None:
    root, outside, limits = jail
    (root / "out_dir").symlink_to(outside)
    (root / "out_file.jpg").symlink_to(outside / "secret.jpg")
    (root / "in_dir").symlink_to(root / "sub")  # even links that stay inside
    (root / "in_file.jpg").symlink_to(root / "sub" / "a.jpg")
    (root / "dangling.jpg").symlink_to(root / "nothing.jpg")
    for tail in ("out_dir/secret.jpg", "out_file.jpg", "in_dir/a.jpg", "in_file.jpg"):
        message = expect_error(f"file://{root}/{tail}", "forbidden_source", limits)
        assert "symbolic link" in message
    expect_error(f"file://{root}/dangling.jpg", "forbidden_source", limits)
    expect_error(f"file://{root}/out_dir", "forbidden_source", limits)


def test_symlink_loop_is_refused(jail: tuple[Path, Path, ImageLimits]) -> None:
    root, _, limits = jail
    (root / "loop1").symlink_to(root / "loop2")
    (root / "loop2").symlink_to(root / "loop1")
    (root / "self").symlink_to("self")
    for tail in ("loop1/a.jpg", "loop1", "self", "self/self/a.jpg"):
        expect_error(f"file://{root}/{tail}", "forbidden_source", limits)


def test_file_used_as_directory_fails(jail: tuple[Path, Path, ImageLimits]) -> None:
    root, _, limits = jail
    message = expect_error(f"file://{root}/sub/a.jpg/b.jpg", "fetch_failed", limits)
    assert "Not a directory" in message


def test_directory_and_root_are_not_files(jail: tuple[Path, Path, ImageLimits]) -> None:
    root, _, limits = jail
    assert "directory" in expect_error(f"file://{root}/sub", "fetch_failed", limits)
    assert "directory" in expect_error(f"file://{root}/sub/", "fetch_failed", limits)
    assert "image root" in expect_error(root.as_uri(), "fetch_failed", limits)


def _load_in_thread(source: str, limits: ImageLimits) -> BaseException | bytes:
    """Run load_image_bytes where a hang fails the test instead of blocking it."""
    result: list[BaseException | bytes] = []

    def run() -> None:
        try:
            result.append(load_image_bytes(source, limits))
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), f"loading {source} hangs"
    return result[0]


def test_fifo_is_refused_without_hanging(jail: tuple[Path, Path, ImageLimits]) -> None:
    root, _, limits = jail
    os.mkfifo(root / "pipe.jpg")
    error = _load_in_thread((root / "pipe.jpg").as_uri(), limits)
    assert isinstance(error, ImageError) and error.kind == "fetch_failed", repr(error)
    assert "FIFO" in str(error)
    error = _load_in_thread(f"file://{root}/pipe.jpg/a.jpg", limits)  # FIFO as a directory
    assert isinstance(error, ImageError) and error.kind == "fetch_failed", repr(error)


def test_socket_is_refused(jail: tuple[Path, Path, ImageLimits]) -> None:
    root, _, limits = jail
    with socket.socket(socket.AF_UNIX) as listener:
        try:
            listener.bind(str(root / "s.jpg"))
        except OSError as exc:  # e.g. the path is longer than sun_path
            pytest.skip(f"cannot bind a unix socket here: {exc}")
        expect_error((root / "s.jpg").as_uri(), "fetch_failed", limits)


def test_device_is_refused(jail: tuple[Path, Path, ImageLimits]) -> None:
    root, _, limits = jail
    try:  # the same device as /dev/null: opening it has no side effects
        os.mknod(root / "null.jpg", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except OSError as exc:
        pytest.skip(f"cannot create a device node: {exc}")
    error = _load_in_thread((root / "null.jpg").as_uri(), limits)
    assert isinstance(error, ImageError) and error.kind == "fetch_failed", repr(error)
    assert "device" in str(error)


def test_name_too_long_fails(jail: tuple[Path, Path, ImageLimits]) -> None:
    root, _, limits = jail
    message = expect_error(f"file://{root}/{'n' * 300}.jpg", "fetch_failed", limits)
    assert "too long" in message and len(message) < 600
    deep = "/".join(["d" * 200] * 30)  # longer than PATH_MAX in total
    expect_error(f"file://{root}/{deep}/a.jpg", "fetch_failed", limits)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of their mode")
def test_permission_denied_fails(jail: tuple[Path, Path, ImageLimits]) -> None:
    root, _, limits = jail
    (root / "sub" / "a.jpg").chmod(0)
    assert "Permission denied" in expect_error(f"file://{root}/sub/a.jpg", "fetch_failed", limits)
    (root / "sub" / "a.jpg").chmod(0o600)
    (root / "sub").chmod(0)
    try:
        expect_error(f"file://{root}/sub/a.jpg", "fetch_failed", limits)
    finally:
        (root / "sub").chmod(0o700)


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (errno.EACCES, "Permission denied"),
        (errno.EINVAL, "Invalid argument"),  # what a directory swapped mid-walk gave before
        (errno.ENAMETOOLONG, "too long"),
        (errno.EIO, "Input/output error"),
    ],
)
@pytest.mark.parametrize("failing", [b"sub", b"a.jpg"])
def test_open_errors_become_image_errors(
    jail: tuple[Path, Path, ImageLimits],
    monkeypatch: pytest.MonkeyPatch,
    code: int,
    text: str,
    failing: bytes,
) -> None:
    """Errors a test cannot provoke for real (running as root, kernel races)."""
    root, _, limits = jail
    real_open = os.open

    def fake_open(path: Any, flags: int, mode: int = 0o777, **kwargs: Any) -> int:
        if path == failing:
            raise OSError(code, os.strerror(code), path)
        return real_open(path, flags, mode, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    assert text in expect_error(f"file://{root}/sub/a.jpg", "fetch_failed", limits)


def test_unusable_root_fails(jail: tuple[Path, Path, ImageLimits]) -> None:
    root, _, _ = jail
    missing = root.parent / "missing"
    message = expect_error(
        f"file://{missing}/a.jpg", "fetch_failed", ImageLimits(file_root=missing)
    )
    assert "image root" in message
    bad = ImageLimits(file_root=Path(f"{root}\0x"))
    expect_error(f"file://{root}/sub/a.jpg", "fetch_failed", bad)


def test_hard_linked_files_are_refused(jail: tuple[Path, Path, ImageLimits]) -> None:
    """A hard link to an outside file looks like any file, so st_nlink > 1 is refused."""
    root, outside, limits = jail
    try:
        os.link(outside / "secret.jpg", root / "sub" / "linked.jpg")
    except OSError as exc:
        pytest.skip(f"cannot hard-link here: {exc}")
    message = expect_error(f"file://{root}/sub/linked.jpg", "forbidden_source", limits)
    assert "hard links" in message
    # Both names inside the root: refused too, that is the price of the rule.
    os.link(root / "sub" / "a.jpg", root / "copy.jpg")
    expect_error(f"file://{root}/sub/a.jpg", "forbidden_source", limits)
    (root / "copy.jpg").unlink()
    assert load_image_bytes(f"file://{root}/sub/a.jpg", limits) == BODY


def _exchanger() -> Callable[[bytes, bytes], None]:
    """Atomically swap two paths (renameat2 RENAME_EXCHANGE), else swap with three renames."""

    def three_renames(a: bytes, b: bytes) -> None:
        os.rename(a, a + b".tmp")
        os.rename(b, a)
        os.rename(a + b".tmp", b)

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None or sys.platform != "linux":
        return three_renames
    at_fdcwd, rename_exchange = -100, 2

    def exchange(a: bytes, b: bytes) -> None:
        if renameat2(at_fdcwd, a, at_fdcwd, b, rename_exchange) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    try:  # some file systems lack RENAME_EXCHANGE
        with tempfile.TemporaryDirectory() as probe:
            x, y = os.path.join(probe, "x"), os.path.join(probe, "y")
            os.mkdir(x)
            os.symlink(x, y)
            exchange(os.fsencode(x), os.fsencode(y))
    except OSError:
        return three_renames
    return exchange


def test_directory_flipped_to_an_outside_link_never_leaks(
    jail: tuple[Path, Path, ImageLimits],
) -> None:
    """root/flip swaps between a real folder and a link to outside/ while it is loaded.

    The old resolve-check-open code served outside/secret.jpg a few dozen times in 3,000
    loads here (and raised OSError EINVAL); every load must now return the inside file or
    raise ImageError.
    """
    root, outside, limits = jail
    (root / "flip").mkdir()
    (root / "flip" / "secret.jpg").write_bytes(b"inside")
    (root / "other").symlink_to(outside)
    exchange = _exchanger()
    stop = threading.Event()
    flips: list[int] = [0]
    failures: list[BaseException] = []

    def flipper() -> None:
        a, b = os.fsencode(root / "flip"), os.fsencode(root / "other")
        try:
            while not stop.is_set():
                exchange(a, b)
                flips[0] += 1
        except BaseException as exc:
            failures.append(exc)

    source = (root / "flip" / "secret.jpg").as_uri()
    outcomes = {"inside": 0, "refused": 0}
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # interleave the threads between syscalls, not every 5 ms
    thread = threading.Thread(target=flipper, daemon=True)
    thread.start()
    deadline = time.monotonic() + 4
    try:
        for attempt in range(3000):
            try:
                data = load_image_bytes(source, limits)
            except ImageError:
                outcomes["refused"] += 1
            else:
                assert data == b"inside", f"attempt {attempt} returned {data!r}"
                outcomes["inside"] += 1
            if time.monotonic() > deadline:
                break
    finally:
        stop.set()
        thread.join(5)
        sys.setswitchinterval(interval)
    assert not failures, failures
    assert flips[0] > 0 and outcomes["inside"] > 0 and outcomes["refused"] > 0, (flips, outcomes)
