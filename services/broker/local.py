"""Fetch, format, start and stop a real single-node Apache Kafka broker (KRaft).

The jars come from Maven Central through `pom.xml` (kept in `deploy/kafka/`, shipped in the
wheel); the broker runs as a JVM child process on loopback ports (free ones unless a port
is asked for: `llmflow kafka start` asks for 9092) with settings that keep tests fast. Used
alike by the test fixtures, `make demo` and `llmflow kafka start`.

Where the jars go (`lib_dir()`): `LLMFLOW_KAFKA_LIB` when set; in a checkout
`deploy/kafka/lib`; from an installed wheel `${XDG_CACHE_HOME:-~/.cache}/llmflow/kafka-<Kafka
version>/lib`, so that site-packages is never written to.

A data folder keeps its broker: the first start formats it and writes `llmflow-broker.json`
(cluster id, broker port, controller port); later starts on the same folder reuse all three
and skip formatting, so the topics and records are still there (see `LocalKafka.start`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from llmflow.errors import LlmflowError
from llmflow.services.broker.certs import BrokerCertificates
from llmflow.services.broker.security import KafkaSecurity

log = logging.getLogger(__name__)

# `kafka` beside this file: in a checkout a link to `deploy/kafka/`; in a wheel a folder with
# copies of the two files below (setuptools copies what a link points to).
KAFKA_DIR = Path(__file__).resolve().parent / "kafka"
LIB_ENV = "LLMFLOW_KAFKA_LIB"

# Local-only settings: one node, no replication, no waiting for rebalances.
_FAST_SETTINGS = {
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "8",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    "num.partitions": "4",
    "default.replication.factor": "1",
    "auto.create.topics.enable": "true",
    "log.flush.interval.messages": "9223372036854775807",
    "message.max.bytes": "4194304",
}


# The secure broker's SASL mechanism and users: `admin` for the broker itself, `llmflow`
# for clients.
SCRAM = "SCRAM-SHA-512"
ADMIN_USER = "admin"
CLIENT_USER = "llmflow"

# What `secrets.token_urlsafe` makes: a SCRAM password of the local broker.
_URL_SAFE = re.compile(r"[A-Za-z0-9_-]+")

# In the data folder: what a restart needs to find the same cluster on the same address.
STATE_FILE = "llmflow-broker.json"


class BrokerError(LlmflowError):
    """The local broker could not be fetched or started."""


@dataclass(frozen=True)
class BrokerState:
    """What a data folder was formatted with; stored as `STATE_FILE` in the folder."""

    cluster_id: str
    port: int
    controller_port: int
    secure: bool = False
    """SASL_SSL with SCRAM users and a throw-away CA (see `LocalKafka.secure`)."""

    @classmethod
    def read(cls, path: Path) -> BrokerState | None:
        """The state in `path`, None when there is none; BrokerError when it is unreadable."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BrokerError(f"cannot read {path}: {exc}") from exc
        try:
            data = json.loads(text)
            state = cls(
                str(data["cluster_id"]),
                int(data["port"]),
                int(data["controller_port"]),
                bool(data.get("secure", False)),
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise BrokerError(
                f"{path} is damaged ({exc!r}); remove the folder {path.parent} to start afresh"
            ) from exc
        if not (0 < state.port < 65536 and 0 < state.controller_port < 65536):
            raise BrokerError(f"{path} names a port outside 1-65535")
        return state

    def write(self, path: Path) -> None:
        """Replace `path` atomically: a crash leaves the old state or the new, never half."""
        data = {
            "cluster_id": self.cluster_id,
            "port": self.port,
            "controller_port": self.controller_port,
            "secure": self.secure,
        }
        scratch = path.with_name(f".{path.name}.tmp")
        scratch.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(scratch, path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kafka_version(pom: Path | None = None) -> str:
    """`kafka.version` of the Maven file (by default the one shipped with llmflow)."""
    pom = pom or KAFKA_DIR / "pom.xml"
    try:
        root = ET.parse(pom).getroot()
    except (OSError, ET.ParseError) as exc:
        raise BrokerError(f"cannot read {pom}: {exc}") from exc
    for element in root.iter():
        if element.tag.rpartition("}")[2] == "kafka.version" and element.text:
            return element.text.strip()
    raise BrokerError(f"{pom} names no kafka.version")


def lib_dir() -> Path:
    """Where the Kafka jars are (or go): `LLMFLOW_KAFKA_LIB` when set; in a checkout
    `deploy/kafka/lib`; from an installed wheel a user cache folder per Kafka version."""
    if configured := os.environ.get(LIB_ENV):
        return Path(configured).expanduser().absolute()
    if KAFKA_DIR.is_symlink():  # only a checkout has the link; a wheel holds copies
        return KAFKA_DIR.resolve() / "lib"
    cache = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(cache) if Path(cache).is_absolute() else Path.home() / ".cache"
    return root / "llmflow" / f"kafka-{kafka_version()}" / "lib"


def kafka_is_fetched() -> bool:
    lib = lib_dir()
    return lib.is_dir() and any(lib.glob("kafka_2.13-*.jar"))


def fetch_kafka() -> Path:
    """Download the Kafka jars with Maven unless they are already there; returns their
    folder."""
    lib = lib_dir()
    if kafka_is_fetched():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            "Maven (mvn) is needed to fetch Kafka; install it (apt-get install maven)"
        )
    log.info("fetching Apache Kafka from Maven Central into %s", lib)
    lib.mkdir(parents=True, exist_ok=True)
    # Maven runs on a copy of the pom in a scratch folder, its base directory: nothing it
    # might write lands beside the installed package. `outputDirectory` overrides the
    # pom's default `${project.basedir}/lib`.
    with tempfile.TemporaryDirectory(prefix="llmflow-kafka-") as scratch:
        pom = Path(scratch) / "pom.xml"
        shutil.copyfile(KAFKA_DIR / "pom.xml", pom)
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            f"-DoutputDirectory={lib}",
            "dependency:copy-dependencies",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=scratch)
    if result.returncode != 0 or not kafka_is_fetched():
        raise BrokerError(f"fetching Kafka failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return lib


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java:
        raise BrokerError(
            "Java 17+ is needed to run Kafka; install it (apt-get install default-jre)"
        )
    return java


@dataclass
class LocalKafka:
    """One broker+controller process. Use as a context manager or call start/stop.

    `port` 0 picks a free port at the first start of a folder and reuses it afterwards.
    `secure` True starts a new folder with a SASL_SSL listener only (SCRAM-SHA-512 users
    `admin` and `llmflow`, a certificate from a throw-away CA); None keeps what the folder
    was started with (plain for a new one). `client_security()` and `environment()` tell
    clients how to connect.
    """

    data_dir: Path
    port: int = 0
    heap_mb: int = 512
    process: subprocess.Popen[bytes] | None = None
    secure: bool | None = None
    log_config: Path | None = None
    """The broker's log4j2 configuration; unset, the shipped one (warnings only). A bench
    gives its own to have the broker log every request (`kafka.request.logger`)."""

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def _security_dir(self) -> Path:
        return self.data_dir / "security"

    def client_security(self) -> KafkaSecurity | None:
        """How a client logs in as user `llmflow`; None for a plain broker."""
        if not self.secure:
            return None
        return KafkaSecurity.model_validate(
            {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": SCRAM,
                "sasl_username": CLIENT_USER,
                "sasl_password": self._passwords()[CLIENT_USER],
                "ssl_ca_location": BrokerCertificates.in_folder(self._security_dir).ca,
            }
        )

    def environment(self) -> dict[str, str]:
        """The variables every llmflow command reads to reach this broker."""
        env = {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers}
        if security := self.client_security():
            assert security.sasl_password is not None
            env |= {
                "KAFKA_SECURITY_PROTOCOL": security.security_protocol,
                "KAFKA_SASL_MECHANISM": security.sasl_mechanism,
                "KAFKA_SASL_USERNAME": str(security.sasl_username),
                "KAFKA_SASL_PASSWORD": security.sasl_password.get_secret_value(),
                "KAFKA_SSL_CA_LOCATION": str(security.ssl_ca_location),
            }
        return env

    def _passwords(self) -> dict[str, str]:
        """The SCRAM users' passwords, made at the folder's first secure start."""
        path = self._security_dir / "users.json"
        try:
            users = json.loads(path.read_text(encoding="utf-8"))
            passwords = {name: users[name] for name in (ADMIN_USER, CLIENT_USER)}
            for name, password in passwords.items():
                # As made below: the JAAS line and --add-scram take them unquoted.
                if not (isinstance(password, str) and _URL_SAFE.fullmatch(password)):
                    raise ValueError(f"the password of {name} is not a URL-safe token")
            return passwords
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BrokerError(f"{path} is damaged ({exc!r}); remove {self.data_dir}") from exc
        if self._meta_properties.exists():
            raise BrokerError(f"{path} is missing: the users of {self.data_dir} are lost")
        users = {name: secrets.token_urlsafe(18) for name in (ADMIN_USER, CLIENT_USER)}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(users, indent=2) + "\n", encoding="utf-8")
        path.chmod(0o600)
        return users

    def _write_config(self, controller_port: int) -> Path:
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir / "logs"),
            **_FAST_SETTINGS,
            **(self._secure_settings(controller_port) if self.secure else {}),
        }
        path = self.data_dir / "server.properties"
        path.touch(mode=0o600)  # a secure broker's file holds its admin password
        path.chmod(0o600)
        path.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        return path

    def _secure_settings(self, controller_port: int) -> dict[str, str]:
        """One SASL_SSL listener (the broker talks to itself on it as `admin`); the
        controller stays on loopback PLAINTEXT."""
        certs = BrokerCertificates.in_folder(self._security_dir)
        if not certs.exist():
            certs.create()
        admin = self._passwords()[ADMIN_USER]
        listener = f"SASL_SSL://127.0.0.1:{self.port}"
        return {
            "listeners": f"{listener},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": listener,
            "inter.broker.listener.name": "SASL_SSL",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
            "sasl.enabled.mechanisms": SCRAM,
            "sasl.mechanism.inter.broker.protocol": SCRAM,
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{ADMIN_USER}" password="{admin}";'
            ),
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(certs.keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(certs.ca),
        }

    def _run_java(self, main_class: str, *args: str) -> list[str]:
        return [
            _java(),
            f"-Xmx{self.heap_mb}m",
            "-XX:+UseG1GC",
            "-XX:TieredStopAtLevel=1",  # faster JVM start; a test broker is never CPU-bound
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log_config or KAFKA_DIR / 'log4j2.properties'}",
            "-cp",
            str(lib_dir() / "*"),
            main_class,
            *args,
        ]

    def start(self, timeout_s: float = 90.0) -> LocalKafka:
        """Start the broker on `data_dir`; formats the folder at its first start only.

        The first start picks the ports (`port`, or a free one when 0, and a free controller
        port) and a random cluster id, formats the storage and keeps the three in
        `data_dir/llmflow-broker.json`. A later start on the same folder skips formatting
        and reuses them, so the bootstrap address stays the same and the records are kept.
        An explicit `port` that differs from the kept one is an error, not a silent move:
        producers and consumers configured with the old address would lose the broker.
        A folder formatted before the state file existed keeps its cluster id (read from
        `logs/meta.properties`) and gets new ports.
        """
        fetch_kafka()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        state = self._state()
        self.port = state.port
        self.secure = state.secure
        for port in {state.port, state.controller_port}:
            if not port_is_free(port):
                raise BrokerError(
                    f"port {port} of the broker in {self.data_dir} is in use: is that broker "
                    "already running? (stop it, or remove the folder to start afresh)"
                )
        config = self._write_config(state.controller_port)
        if not self._meta_properties.exists():
            self._format(config, state.cluster_id)
        state.write(self.data_dir / STATE_FILE)
        with (self.data_dir / "broker.log").open("ab") as log_file:  # the child keeps its copy
            self.process = subprocess.Popen(
                self._run_java("kafka.Kafka", str(config)),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal is ours to forward
            )
        self._wait_ready(timeout_s)
        log.info("Kafka is up on %s (data in %s)", self.bootstrap_servers, self.data_dir)
        return self

    @property
    def _meta_properties(self) -> Path:
        """Written by the storage format; its presence means the folder is formatted."""
        return self.data_dir / "logs" / "meta.properties"

    def _state(self) -> BrokerState:
        """The kept state of the folder, or a new one for a folder never started."""
        path = self.data_dir / STATE_FILE
        kept = BrokerState.read(path)
        formatted_id = _meta_cluster_id(self._meta_properties)
        if kept is None:
            port = self.port or free_port()
            controller_port = free_port()
            while controller_port == port:
                controller_port = free_port()
            secure = bool(self.secure)
            return BrokerState(formatted_id or _cluster_id(), port, controller_port, secure)
        if self.port and self.port != kept.port:
            raise BrokerError(
                f"{self.data_dir} holds a broker on port {kept.port} (kept in {path}); "
                f"start it without a port or with port {kept.port}, or use another data "
                f"folder for port {self.port}"
            )
        if self.secure is not None and self.secure != kept.secure:
            kind = "a SASL_SSL" if kept.secure else "a plain"
            raise BrokerError(
                f"{self.data_dir} holds {kind} broker (kept in {path}); start it as it was, "
                "or use another data folder"
            )
        if formatted_id and formatted_id != kept.cluster_id:
            # The formatted storage is what the broker checks: believe it over the state file.
            return BrokerState(formatted_id, kept.port, kept.controller_port, kept.secure)
        return kept

    def _format(self, config: Path, cluster_id: str) -> None:
        fmt = subprocess.run(
            self._run_java(
                # "--cluster-id=ID": a random id may start with "-", which a bare argument cannot.
                "kafka.tools.StorageTool",
                "format",
                f"--cluster-id={cluster_id}",
                "-c",
                str(config),
                *self._scram_users(),
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if fmt.returncode != 0:
            raise BrokerError(f"formatting KRaft storage failed:\n{fmt.stdout}{fmt.stderr}")

    def _scram_users(self) -> list[str]:
        """Users are made with the storage (KIP-900): the broker needs `admin` to start."""
        if not self.secure:
            return []
        users = self._passwords().items()
        return [f"--add-scram={SCRAM}=[name={name},password={pw}]" for name, pw in users]

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                tail = (self.data_dir / "broker.log").read_text(errors="replace")[-3000:]
                raise BrokerError(f"Kafka exited with code {self.process.returncode}:\n{tail}")
            if broker_answers(self.bootstrap_servers, self.client_security()):
                return
            time.sleep(0.5)
        self.stop()
        raise BrokerError(f"Kafka did not answer on {self.bootstrap_servers} in {timeout_s:.0f} s")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM for a clean shutdown; SIGKILL if it hangs."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding."""
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _meta_cluster_id(meta: Path) -> str | None:
    """`cluster.id` of a formatted log folder's meta.properties, None when not formatted."""
    try:
        lines = meta.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BrokerError(f"cannot read {meta}: {exc}") from exc
    for line in lines:
        name, sep, value = line.partition("=")
        if sep and name.strip() == "cluster.id" and value.strip():
            return value.strip()
    raise BrokerError(f"{meta} names no cluster.id; remove {meta.parent.parent} to start afresh")


def kept_port(data_dir: Path) -> int | None:
    """The broker port `data_dir` was started with before (None: never started there)."""
    state = BrokerState.read(data_dir / STATE_FILE)
    return None if state is None else state.port


def port_is_free(port: int) -> bool:
    """True when a listener could bind 127.0.0.1:`port` now (as the JVM does, reusing
    addresses, so a port left in TIME_WAIT by a stopped broker counts as free)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def broker_answers(bootstrap_servers: str, security: KafkaSecurity | None = None) -> bool:
    """True when the broker serves metadata (not only an open port); `security` to log in."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    host, _, port = bootstrap_servers.split(",")[0].rpartition(":")
    try:  # a closed port first, quietly: the admin client logs every refused connection
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    try:
        options = security.client_options() if security else {}
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap_servers, request_timeout_ms=3000, **options
        )
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()
