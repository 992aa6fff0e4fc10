"""A throw-away certificate authority for the local broker's TLS listener: one CA and one
broker certificate for `localhost` and 127.0.0.1, written as PEM files that Kafka
(`ssl.keystore.type=PEM`) and Python's `ssl` read as they are. The CA's key is not kept:
nothing else is ever signed with it."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Long enough that a kept data folder never sees its certificate expire.
VALIDITY = dt.timedelta(days=3650)


@dataclass(frozen=True)
class BrokerCertificates:
    ca: Path
    """PEM certificate of the CA: what clients trust (`KAFKA_SSL_CA_LOCATION`)."""
    keystore: Path
    """PEM private key followed by the broker's certificate chain."""

    @classmethod
    def in_folder(cls, folder: Path) -> BrokerCertificates:
        return cls(folder / "ca.pem", folder / "broker.pem")

    def exist(self) -> bool:
        return self.ca.is_file() and self.keystore.is_file()

    def create(self) -> BrokerCertificates:
        """Write a new CA and broker certificate (replacing any there)."""
        self.ca.parent.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)  # clocks differ a little
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llmflow local broker CA")])
        ca_cert = (
            _builder(ca_name, ca_name, ca_key.public_key(), now)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_ca_usage(), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        cert = (
            _builder(name, ca_name, key.public_key(), now)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        private = key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.ca.write_bytes(ca_cert.public_bytes(pem))
        self.keystore.write_bytes(private + cert.public_bytes(pem) + ca_cert.public_bytes(pem))
        self.keystore.chmod(0o600)
        return self


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePublicKey, now: dt.datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
    )


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
