"""Why a client cannot log in to a broker, in one line naming the setting to fix. Kafka
clients retry a refused login until their bootstrap times out (30 s and more) and then say
only "unable to bootstrap"; one connection made by hand says at once what went wrong."""

from __future__ import annotations

import asyncio
import ssl

from aiokafka.conn import create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaConnectionError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)

from llmflow.services.broker.security import KafkaSecurity

# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH: the CA is
# trusted, the certificate names another host.
_NAME_MISMATCH = frozenset({62, 64})


async def login_problem(
    host: str, port: int, security: KafkaSecurity, timeout_s: float
) -> str | None:
    """The reason `security` cannot log in to `host:port`; None when it can, or when the
    failure is not about security (the caller's metadata check reports those)."""
    address = f"{host}:{port}"
    try:
        async with asyncio.timeout(timeout_s):
            conn = await create_conn(
                host,
                port,
                client_id="llmflow-login",
                request_timeout_ms=max(1, int(timeout_s * 1000)),
                **security.client_options(),
            )
    except SaslAuthenticationFailed as exc:
        return (
            f"KAFKA_SASL_USERNAME={security.sasl_username}: {address} refused the login "
            f"({security.sasl_mechanism}); check KAFKA_SASL_PASSWORD: {_message(exc)}"
        )
    except (UnsupportedSaslMechanismError, IllegalSaslStateError) as exc:
        return (
            f"KAFKA_SASL_MECHANISM={security.sasl_mechanism}: {address} does not take it "
            f"({type(exc).__name__})"
        )
    except ssl.SSLCertVerificationError as exc:
        if exc.verify_code in _NAME_MISMATCH:
            return (
                f"KAFKA_BOOTSTRAP_SERVERS: the certificate of {address} does not name {host} "
                f"({exc.verify_message}); connect by a name it holds, or set "
                "KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM=none"
            )
        ca = security.ssl_ca_location or "unset: the system's CAs"
        return (
            f"KAFKA_SSL_CA_LOCATION={ca}: the certificate of {address} is not trusted "
            f"({exc.verify_message})"
        )
    except ssl.SSLError as exc:
        return (
            f"KAFKA_SECURITY_PROTOCOL={security.security_protocol}: TLS with {address} failed "
            f"({exc.reason or exc}); is it a TLS listener?"
        )
    except KafkaConnectionError as exc:
        if security.security_protocol != "SASL_PLAINTEXT":
            return None  # PLAINTEXT: the metadata check tells a port that is not Kafka
        return (
            f"KAFKA_SECURITY_PROTOCOL={security.security_protocol}: {address} closed the "
            f"connection ({_message(exc)}); does its listener expect TLS or SASL?"
        )
    except (OSError, TimeoutError):
        return None  # unreachable or slow: not a matter of security
    conn.close()
    return None


def _message(exc: BaseException) -> str:
    return str(exc).split(": ", 1)[-1] if str(exc) else type(exc).__name__
