"""Fetch, format, start and stop a real single-node Apache Kafka broker (KRaft).

The jars come from Maven Central through `pom.xml` (kept in `deploy/kafka/`, shipped in the
wheel); the broker runs as a JVM child process on free loopback ports with settings that
keep tests fast. Used alike by the test fixtures, `make demo` and `llmflow kafka start`.

Where the jars go (`lib_dir()`): `LLMFLOW_KAFKA_LIB` when set; in a checkout
`deploy/kafka/lib`; from an installed wheel `${XDG_CACHE_HOME:-~/.cache}/llmflow/kafka-<Kafka
version>/lib`, so that site-packages is never written to.
"""

from __future__ import annotations

import logging
import os
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


class BrokerError(LlmflowError):
    """The local broker could not be fetched or started."""


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
    """One broker+controller process. Use as a context manager or call start/stop."""

    data_dir: Path
    port: int = 0
    heap_mb: int = 512
    process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

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
        }
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        return path

    def _run_java(self, main_class: str, *args: str) -> list[str]:
        return [
            _java(),
            f"-Xmx{self.heap_mb}m",
            "-XX:+UseG1GC",
            "-XX:TieredStopAtLevel=1",  # faster JVM start; a test broker is never CPU-bound
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.properties'}",
            "-cp",
            str(lib_dir() / "*"),
            main_class,
            *args,
        ]

    def start(self, timeout_s: float = 90.0) -> LocalKafka:
        fetch_kafka()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        config = self._write_config(free_port())
        fmt = subprocess.run(
            self._run_java(
                # "--cluster-id=ID": a random id may start with "-", which a bare argument cannot.
                "kafka.tools.StorageTool",
                "format",
                f"--cluster-id={_cluster_id()}",
                "-c",
                str(config),
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if fmt.returncode != 0:
            raise BrokerError(f"formatting KRaft storage failed:\n{fmt.stdout}{fmt.stderr}")
        log_file = (self.data_dir / "broker.log").open("ab")
        self.process = subprocess.Popen(
            self._run_java("kafka.Kafka", str(config)),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal is ours to forward, not the JVM's
        )
        self._wait_ready(timeout_s)
        log.info("Kafka is up on %s (data in %s)", self.bootstrap_servers, self.data_dir)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                tail = (self.data_dir / "broker.log").read_text(errors="replace")[-3000:]
                raise BrokerError(f"Kafka exited with code {self.process.returncode}:\n{tail}")
            if broker_answers(self.bootstrap_servers):
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


def broker_answers(bootstrap_servers: str) -> bool:
    """True when the broker serves metadata (not only an open port)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    host, _, port = bootstrap_servers.split(",")[0].rpartition(":")
    try:  # a closed port first, quietly: the admin client logs every refused connection
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=3000)
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()
