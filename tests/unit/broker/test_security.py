"""Kafka security settings: read from KAFKA_* variables, refused with one line naming the
variable when incomplete, and turned into the options of every client library."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest

from llmflow.services.broker.certs import BrokerCertificates
from llmflow.services.broker.local import BrokerState, LocalKafka
from llmflow.services.broker.security import (
    KafkaSecurity,
    KafkaSecurityError,
    client_options,
    kafka_security,
)

VARIABLES = [
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SSL_CA_LOCATION",
    "KAFKA_SSL_CERTIFICATE_LOCATION",
    "KAFKA_SSL_KEY_LOCATION",
    "KAFKA_SSL_KEY_PASSWORD",
    "KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM",
]


NEEDS_USER = "needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> BrokerCertificates:
    folder = tmp_path_factory.mktemp("certs")
    return BrokerCertificates.in_folder(folder).create()


def test_plaintext_by_default_adds_nothing_to_the_clients() -> None:
    security = kafka_security()
    assert security.security_protocol == "PLAINTEXT"
    assert client_options() == {}
    assert security.faust_credentials() is None


def test_sasl_ssl_with_scram(monkeypatch: pytest.MonkeyPatch, certs: BrokerCertificates) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")  # any case, as librdkafka
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "scram-sha-512")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("KAFKA_SSL_CA_LOCATION", str(certs.ca))
    security = kafka_security()
    options = client_options()
    assert {k: v for k, v in options.items() if k != "ssl_context"} == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "svc",
        "sasl_plain_password": "s3cret",
    }
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    credentials = security.faust_credentials()
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert "s3cret" not in repr(security) and "s3cret" not in repr(credentials)


def test_mtls_loads_the_client_certificate(
    monkeypatch: pytest.MonkeyPatch, certs: BrokerCertificates
) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("KAFKA_SSL_CA_LOCATION", str(certs.ca))
    # The keystore holds the key, then the chain: one file serves as both.
    monkeypatch.setenv("KAFKA_SSL_CERTIFICATE_LOCATION", str(certs.keystore))
    monkeypatch.setenv("KAFKA_SSL_KEY_LOCATION", str(certs.keystore))
    monkeypatch.setenv("KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM", "none")
    security = kafka_security()
    options = client_options()
    assert options["security_protocol"] == "SSL" and "sasl_mechanism" not in options
    assert options["ssl_context"].check_hostname is False
    credentials = security.faust_credentials()
    assert isinstance(credentials, faust.SSLCredentials)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
            NEEDS_USER,
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "u"},
            NEEDS_USER,
        ),
        ({"KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM"),
        ({"KAFKA_SSL_CA_LOCATION": "/no/such/ca.pem"}, "KAFKA_SSL_CA_LOCATION=/no/such/ca.pem"),
        ({"KAFKA_SSL_KEY_LOCATION": "/etc/hostname"}, "needs both KAFKA_SSL_CERTIFICATE_LOCATION"),
    ],
)
def test_incomplete_settings_are_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], message: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(KafkaSecurityError) as info:
        kafka_security()
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_model_built_in_code_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SSL_KEY_LOCATION", "/etc/hostname")  # would be refused
    security = KafkaSecurity.model_validate(
        {"security_protocol": "SASL_PLAINTEXT", "sasl_username": "a", "sasl_password": "b"}
    )
    assert security.ssl_key_location is None and security.ssl_context() is None


def test_the_broker_certificate_is_signed_by_the_ca_for_loopback(
    certs: BrokerCertificates,
) -> None:
    from cryptography import x509

    ca = x509.load_pem_x509_certificate(certs.ca.read_bytes())
    chain = x509.load_pem_x509_certificates(certs.keystore.read_bytes())
    leaf = chain[0]
    assert leaf.issuer == ca.subject
    leaf.verify_directly_issued_by(ca)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert certs.keystore.stat().st_mode & 0o077 == 0  # the key is the owner's alone
    # Python trusts the pair as a client would.
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.load_cert_chain(certs.keystore)


def test_a_secure_folder_keeps_its_mode_users_and_port(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path, port=19555, secure=True)
    state = broker._state()
    assert state.secure and state.port == 19555
    state.write(tmp_path / "llmflow-broker.json")
    assert BrokerState.read(tmp_path / "llmflow-broker.json") == state
    settings = broker._secure_settings(state.controller_port)
    assert settings["listeners"].startswith("SASL_SSL://127.0.0.1:19555,")
    assert settings["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    users = broker._scram_users()
    assert [u.split("name=")[1].split(",")[0] for u in users] == ["admin", "llmflow"]
    assert broker._scram_users() == users  # the same passwords on every start
    env = broker.environment()
    assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["KAFKA_SSL_CA_LOCATION"] == str(tmp_path / "security" / "ca.pem")
    assert env["KAFKA_SASL_PASSWORD"] in users[1]
    # Started again without saying: as it was. Started as plain: refused, not downgraded.
    assert LocalKafka(tmp_path)._state().secure
    with pytest.raises(Exception, match="holds a SASL_SSL broker"):
        LocalKafka(tmp_path, secure=False)._state()


def test_a_plain_folder_has_no_client_security(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path)
    assert broker.client_security() is None
    assert set(broker.environment()) == {"KAFKA_BOOTSTRAP_SERVERS"}


@pytest.fixture(scope="module")
def client_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A client certificate with its key in clear and encrypted ("keypass"), another key,
    and a file that is not PEM."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = tmp_path_factory.mktemp("client")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem, pkcs8 = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    files = {
        "cert": cert.public_bytes(pem),
        "key": key.private_bytes(pem, pkcs8, serialization.NoEncryption()),
        "encrypted": key.private_bytes(
            pem, pkcs8, serialization.BestAvailableEncryption(b"keypass")
        ),
        "other": ec.generate_private_key(ec.SECP256R1()).private_bytes(
            pem, pkcs8, serialization.NoEncryption()
        ),
        "junk": b"not a certificate\n",
    }
    paths = {}
    for label, data in files.items():
        paths[label] = folder / f"{label}.pem"
        paths[label].write_bytes(data)
    return paths


def _tls_env(monkeypatch: pytest.MonkeyPatch, **variables: str) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
    for name, value in variables.items():
        monkeypatch.setenv(f"KAFKA_{name.upper()}", value)


@pytest.mark.parametrize(
    ("files", "password", "message"),
    [
        (
            {"ssl_ca_location": "junk"},
            None,
            "KAFKA_SSL_CA_LOCATION={junk}: no PEM CA certificate could be read",
        ),
        (
            {"ssl_certificate_location": "cert", "ssl_key_location": "encrypted"},
            None,
            "KAFKA_SSL_KEY_LOCATION={encrypted} is encrypted: set KAFKA_SSL_KEY_PASSWORD",
        ),
        (
            {"ssl_certificate_location": "cert", "ssl_key_location": "encrypted"},
            "not-the-key-password",
            "KAFKA_SSL_KEY_PASSWORD does not decrypt KAFKA_SSL_KEY_LOCATION={encrypted}",
        ),
        (
            {"ssl_certificate_location": "cert", "ssl_key_location": "other"},
            None,
            "KAFKA_SSL_KEY_LOCATION={other}: not a PEM certificate and its private key",
        ),
        (
            {"ssl_certificate_location": "junk", "ssl_key_location": "key"},
            None,
            "KAFKA_SSL_CERTIFICATE_LOCATION={junk}",
        ),
    ],
    ids=["ca-not-pem", "key-encrypted", "key-password-wrong", "key-of-another", "cert-not-pem"],
)
def test_tls_files_that_cannot_be_used_are_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
    client_keys: dict[str, Path],
    files: dict[str, str],
    password: str | None,
    message: str,
) -> None:
    """Refused when read, not when the first connection fails (as "is it a TLS listener?");
    an encrypted key without its password must not make OpenSSL prompt on the terminal."""
    _tls_env(monkeypatch, **{name: str(client_keys[label]) for name, label in files.items()})
    if password:
        monkeypatch.setenv("KAFKA_SSL_KEY_PASSWORD", password)
    with pytest.raises(KafkaSecurityError) as info:
        kafka_security()
    text = str(info.value)
    assert message.format(**{k: str(v) for k, v in client_keys.items()}) in text
    assert "\n" not in text and (password is None or password not in text)


def test_an_encrypted_key_with_its_password_loads(
    monkeypatch: pytest.MonkeyPatch, client_keys: dict[str, Path]
) -> None:
    _tls_env(
        monkeypatch,
        ssl_certificate_location=str(client_keys["cert"]),
        ssl_key_location=str(client_keys["encrypted"]),
        ssl_key_password="keypass",
    )
    assert isinstance(client_options()["ssl_context"], ssl.SSLContext)


def test_empty_variables_are_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """`KAFKA_SSL_CA_LOCATION=${CA:-}` in a compose file: the system's CAs, not a file `.`."""
    for name in VARIABLES:
        monkeypatch.setenv(name, "")
    security = kafka_security()
    assert security.security_protocol == "PLAINTEXT" and security.ssl_ca_location is None
    assert security.ssl_endpoint_identification_algorithm == "https"


def test_the_endpoint_identification_algorithm_in_any_case(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _tls_env(monkeypatch, ssl_endpoint_identification_algorithm=" NONE ")
    assert client_options()["ssl_context"].check_hostname is False


def test_a_security_error_is_a_configuration_error() -> None:
    """The command line reports it as one line, also where no preflight ran first."""
    from llmflow.errors import ConfigError

    assert issubclass(KafkaSecurityError, ConfigError)


@pytest.mark.parametrize(
    "users",
    [
        '{"admin": null, "llmflow": "x"}',  # would start with the password "None"
        '{"admin": "a", "llmflow": ""}',
        '{"admin": "a\\" b", "llmflow": "x"}',  # would end the JAAS line's quotes
        '{"admin": "a", "llmflow": "x],name=admin"}',  # would change --add-scram
        "[]",
    ],
)
def test_a_damaged_users_file_is_refused(tmp_path: Path, users: str) -> None:
    (tmp_path / "security").mkdir()
    (tmp_path / "security" / "users.json").write_text(users)
    with pytest.raises(Exception, match=r"users\.json is damaged"):
        LocalKafka(tmp_path, secure=True)._scram_users()
