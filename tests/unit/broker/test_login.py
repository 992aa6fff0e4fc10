"""`login_problem` against a TLS listener whose certificate is signed by a trusted CA for
another host: the line names the address and the host check, not the CA."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from llmflow.services.broker.login import login_problem
from llmflow.services.broker.security import KafkaSecurity


def _listener_certificate(folder: Path, host: str) -> tuple[Path, Path]:
    """(CA file, key + certificate file) of a listener whose certificate names `host` only."""
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)

    def certificate(
        subject: str, issuer: x509.Name, public: ec.EllipticCurvePublicKey
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1))
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        certificate("test CA", ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        certificate(host, ca_name, key.public_key())
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_file, keystore = folder / "ca.pem", folder / "listener.pem"
    ca_file.write_bytes(ca.public_bytes(pem))
    keystore.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        + leaf.public_bytes(pem)
    )
    return ca_file, keystore


async def _problem_with(tmp_path: Path, check: Literal["https", "none"]) -> str | None:
    ca, keystore = _listener_certificate(tmp_path, "elsewhere.invalid")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(keystore)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    security = KafkaSecurity(
        security_protocol="SSL",
        ssl_ca_location=ca,
        ssl_endpoint_identification_algorithm=check,
    )
    try:
        return await login_problem("127.0.0.1", port, security, timeout_s=5)
    finally:
        server.close()


async def test_a_certificate_for_another_host_names_the_host_check(tmp_path: Path) -> None:
    problem = await _problem_with(tmp_path, "https")
    assert problem is not None
    assert problem.startswith("KAFKA_BOOTSTRAP_SERVERS: the certificate of 127.0.0.1:")
    assert "KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM=none" in problem
    assert "KAFKA_SSL_CA_LOCATION" not in problem  # the CA is right


async def test_without_the_host_check_the_same_listener_is_no_tls_problem(
    tmp_path: Path,
) -> None:
    problem = await _problem_with(tmp_path, "none")
    assert problem is None or "certificate" not in problem
