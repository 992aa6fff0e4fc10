"""load_image_bytes / decode_inline: allowed sources, SSRF guard, redirects and size caps."""

from __future__ import annotations

import base64
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

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
    expect_error((tmp_path / "secret.jpg").as_uri(), "forbidden_source", limits)
    expect_error(f"file://{root}/../secret.jpg", "forbidden_source", limits)
    expect_error((root / "link.jpg").as_uri(), "forbidden_source", limits)


def test_file_urls_are_refused_without_root(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(BODY)
    expect_error((tmp_path / "a.jpg").as_uri(), "forbidden_source", ImageLimits())


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
