"""How every Kafka client of llmflow reaches a secured cluster (SASL_SSL with PLAIN or SCRAM,
mTLS): one set of settings, named as librdkafka and the Confluent tools name them, turned
into the options of kafka-python, aiokafka and faust. Read from the environment where a
client is made, so the worker, its admin client, the SDK and the CLI agree."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from llmflow.errors import ConfigError

Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class KafkaSecurityError(ConfigError, ValueError):
    """The security settings are incomplete or name files that cannot be read."""


class KafkaSecurity(BaseModel):
    """How to connect; in the environment each field is `KAFKA_<FIELD>` (`kafka_security()`),
    e.g. `KAFKA_SASL_USERNAME`."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    security_protocol: Protocol = "PLAINTEXT"
    """`PLAINTEXT`, `SSL` (TLS, optionally with a client certificate), `SASL_PLAINTEXT` or
    `SASL_SSL` (Confluent Cloud, MSK with SCRAM, Aiven)."""
    sasl_mechanism: Mechanism = "PLAIN"
    """`PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`."""
    sasl_username: str | None = None
    """SASL user (an API key on Confluent Cloud)."""
    sasl_password: SecretStr | None = None
    """SASL password; never printed."""
    ssl_ca_location: Path | None = None
    """PEM file of the CA(s) that signed the brokers' certificates; unset, the system's."""
    ssl_certificate_location: Path | None = None
    """PEM client certificate, for mTLS."""
    ssl_key_location: Path | None = None
    """PEM private key of that certificate."""
    ssl_key_password: SecretStr | None = None
    """Password of that key, if it is encrypted."""
    ssl_endpoint_identification_algorithm: Literal["https", "none"] = "https"
    """`https` checks that the broker's certificate names its host; `none` skips that check."""

    @field_validator("security_protocol", "sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("ssl_endpoint_identification_algorithm", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _complete(self) -> KafkaSecurity:
        if self.sasl and not (self.sasl_username and self.sasl_password):
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={self.security_protocol} needs KAFKA_SASL_USERNAME "
                "and KAFKA_SASL_PASSWORD"
            )
        if (self.ssl_certificate_location is None) != (self.ssl_key_location is None):
            raise ValueError(
                "a client certificate needs both KAFKA_SSL_CERTIFICATE_LOCATION and "
                "KAFKA_SSL_KEY_LOCATION"
            )
        for name, path in self._files().items():
            if not path.is_file():
                raise ValueError(f"{name}={path}: no such file")
        self.ssl_context()  # files that are not PEM, or a key it cannot decrypt: now
        return self

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.security_protocol.endswith("SSL")

    def _files(self) -> dict[str, Path]:
        named = {
            "KAFKA_SSL_CA_LOCATION": self.ssl_ca_location,
            "KAFKA_SSL_CERTIFICATE_LOCATION": self.ssl_certificate_location,
            "KAFKA_SSL_KEY_LOCATION": self.ssl_key_location,
        }
        return {name: path for name, path in named.items() if path is not None}

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of every client; None without TLS. A file that is not PEM, or a key
        that cannot be decrypted, is a ValueError naming the variable."""
        if not self.tls:
            return None
        context = ssl.create_default_context()
        if self.ssl_ca_location is not None:
            try:
                context.load_verify_locations(cafile=self.ssl_ca_location)
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(
                    f"KAFKA_SSL_CA_LOCATION={self.ssl_ca_location}: no PEM CA certificate "
                    f"could be read ({_reason(exc)})"
                ) from None
        if self.ssl_endpoint_identification_algorithm == "none":
            context.check_hostname = False
        if self.ssl_certificate_location and self.ssl_key_location:
            self._load_client_certificate(
                context, self.ssl_certificate_location, self.ssl_key_location
            )
        return context

    def _load_client_certificate(self, context: ssl.SSLContext, cert: Path, key: Path) -> None:
        asked = False

        def password() -> str:
            # Called only for an encrypted key; without it OpenSSL would prompt on the
            # terminal (a worker would wait there for ever).
            nonlocal asked
            asked = True
            if self.ssl_key_password is None:
                raise ValueError(
                    f"KAFKA_SSL_KEY_LOCATION={key} is encrypted: set KAFKA_SSL_KEY_PASSWORD"
                )
            return self.ssl_key_password.get_secret_value()

        try:
            context.load_cert_chain(cert, key, password=password)
        except (ssl.SSLError, OSError) as exc:
            if asked:
                raise ValueError(
                    f"KAFKA_SSL_KEY_PASSWORD does not decrypt KAFKA_SSL_KEY_LOCATION={key}"
                ) from None
            raise ValueError(
                f"KAFKA_SSL_CERTIFICATE_LOCATION={cert}, KAFKA_SSL_KEY_LOCATION={key}: not a "
                f"PEM certificate and its private key ({_reason(exc)})"
            ) from None

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments of kafka-python's and aiokafka's clients (they share the names);
        empty for PLAINTEXT, so the clients keep their own defaults."""
        if self.security_protocol == "PLAINTEXT":
            return {}
        options: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.tls:
            options["ssl_context"] = self.ssl_context()
        if self.sasl:
            assert self.sasl_password is not None  # checked by _complete
            options |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": self.sasl_password.get_secret_value(),
            }
        return options

    def faust_credentials(self) -> Any:
        """`broker_credentials` of the faust app; None for PLAINTEXT."""
        import faust

        if self.sasl:
            assert self.sasl_password is not None
            return faust.SASLCredentials(
                username=self.sasl_username,
                password=self.sasl_password.get_secret_value(),
                ssl_context=self.ssl_context(),
                mechanism=self.sasl_mechanism,
            )
        context = self.ssl_context()
        return faust.SSLCredentials(context) if context else None


class KafkaSecuritySettings(BaseSettings, KafkaSecurity):
    """`KafkaSecurity` read from `KAFKA_<FIELD>` variables."""

    # An empty variable is an unset one (`KAFKA_SSL_CA_LOCATION=${CA:-}` in a compose file).
    model_config = SettingsConfigDict(
        env_prefix="KAFKA_", frozen=True, extra="ignore", env_ignore_empty=True
    )


def kafka_security() -> KafkaSecurity:
    """The settings in the environment now; one line naming the variables when they are wrong."""
    try:
        return KafkaSecuritySettings()
    except ValidationError as exc:
        raise KafkaSecurityError(_one_line(exc)) from None


def client_options() -> dict[str, Any]:
    """What to add to `bootstrap_servers=` when making a kafka-python or aiokafka client."""
    return kafka_security().client_options()


def _one_line(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"KAFKA_{where.upper()}: {message}" if where else message)
    return "; ".join(problems)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
