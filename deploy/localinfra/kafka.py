"""A single-node Apache Kafka (KRaft, combined broker+controller) run from Maven Central jars."""

import base64
import hashlib
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

from ._base import LocalInfraError, ManagedProcess, file_lock, require_tool, run_tool, tail_file, tcp_connectable
from .profile import REPO_ROOT, Profile

#: Kafka version; must match ``kafka.version`` in ``deploy/kafka/pom.xml``.
KAFKA_VERSION = "4.1.1"

KAFKA_DEPLOY_DIR = REPO_ROOT / "deploy" / "kafka"
POM = KAFKA_DEPLOY_DIR / "pom.xml"
LOG4J2_CONFIG = KAFKA_DEPLOY_DIR / "log4j2.properties"

_NODE_ID = 1
_READY_LINE = "Kafka Server started"
_JAVA_HINT = "install a JDK 17 or newer (e.g. `apt-get install openjdk-17-jdk-headless`) or put its bin/ on PATH"
_MAVEN_HINT = "install Maven 3.8+ (e.g. `apt-get install maven`); it is only needed once, to download the Kafka jars"


def _java_major(java: str) -> int | None:
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        return None
    major = int(match.group(1))
    # Java 8 and older report "1.8.0_xxx".
    return int(match.group(2) or 0) if major == 1 else major


class LocalKafka(ManagedProcess):
    """A local single-node Kafka broker for one :class:`Profile`.

    ``provision()`` downloads the jars (cached) and formats the storage once;
    ``start()``/``stop()`` keep the data directory, so topics and committed
    offsets survive restarts.
    """

    component = "kafka"

    def __init__(self, profile: Profile) -> None:
        super().__init__(profile)
        self._java: str | None = None

    # -- paths --------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        """Bootstrap address for clients: ``"127.0.0.1:<port>"``."""
        return f"127.0.0.1:{self.profile.kafka_port}"

    @property
    def install_dir(self) -> Path:
        """Cached Kafka installation: ``<root>/cache/kafka-<version>``."""
        return self.profile.cache_dir / f"kafka-{KAFKA_VERSION}"

    @property
    def libs_dir(self) -> Path:
        """Directory holding the broker's jars."""
        return self.install_dir / "libs"

    @property
    def config_file(self) -> Path:
        """Generated broker configuration of this profile."""
        return self.profile.kafka_dir / "server.properties"

    @property
    def server_log(self) -> Path:
        """Main broker log (INFO and above)."""
        return self.profile.kafka_log_dir / "server.log"

    @property
    def stdout_log(self) -> Path:
        """The JVM's stdout/stderr (WARN and above, JVM errors)."""
        return self.profile.kafka_log_dir / "kafka.out"

    @property
    def logs(self) -> list[Path]:
        """Log files of this component, most useful first."""
        return [self.server_log, self.stdout_log]

    # -- provisioning -------------------------------------------------------

    def _java_path(self) -> str:
        if self._java is None:
            java_home = os.environ.get("JAVA_HOME")
            candidate = Path(java_home, "bin", "java") if java_home else None
            java = str(candidate) if candidate and candidate.is_file() else require_tool("java", _JAVA_HINT)
            major = _java_major(java)
            if major is not None and major < 17:
                raise LocalInfraError(
                    f"{java} is Java {major}; Kafka {KAFKA_VERSION} needs Java 17 or newer: {_JAVA_HINT}"
                )
            self._java = java
        return self._java

    def _pom_digest(self) -> str:
        return hashlib.sha256(POM.read_bytes()).hexdigest()

    def _jars_complete(self) -> bool:
        marker = self.install_dir / ".complete"
        try:
            return marker.read_text().strip() == self._pom_digest() and any(self.libs_dir.glob("kafka_2.13-*.jar"))
        except FileNotFoundError:
            return False

    def _provision_jars(self) -> None:
        if self._jars_complete():
            return
        with file_lock(self.profile.cache_dir / f".{self.component}.lock"):
            if self._jars_complete():
                return
            mvn = require_tool("mvn", _MAVEN_HINT)
            self.install_dir.mkdir(parents=True, exist_ok=True)
            staging = self.install_dir / f"libs.tmp-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            run_tool(
                [
                    mvn,
                    "-q",
                    "-B",
                    "-f",
                    str(POM),
                    "dependency:copy-dependencies",
                    f"-DoutputDirectory={staging}",
                    "-DincludeScope=runtime",
                ],
                what=f"downloading Kafka {KAFKA_VERSION} jars with Maven",
            )
            if not any(staging.glob("kafka_2.13-*.jar")):
                raise LocalInfraError(f"Maven finished but no kafka_2.13 jar appeared in {staging}")
            shutil.rmtree(self.libs_dir, ignore_errors=True)
            os.replace(staging, self.libs_dir)
            # Marker last: its absence means "incomplete, fetch again".
            (self.install_dir / ".complete").write_text(self._pom_digest() + "\n")

    def _cluster_id(self) -> str:
        path = self.profile.kafka_dir / "cluster.id"
        if path.exists():
            return path.read_text().strip()
        # Same shape as `kafka-storage random-uuid` (URL-safe base64 of a v4
        # UUID, no padding) without paying for a JVM start.
        while True:
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            if not cluster_id.startswith("-"):
                break
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(cluster_id + "\n")
        return cluster_id

    def is_formatted(self) -> bool:
        """Return True if the data directory already holds formatted KRaft storage."""
        return (self.profile.kafka_data_dir / "meta.properties").exists()

    def provision(self) -> None:
        """Fetch the jars (cached), write the config and format the storage if not formatted yet."""
        self._java_path()
        self._provision_jars()
        self._write_config()
        if self.is_formatted():
            return
        self.profile.kafka_data_dir.mkdir(parents=True, exist_ok=True)
        run_tool(
            [
                *self._java_base_command(heap=["-Xmx256m"]),
                "kafka.tools.StorageTool",
                "format",
                "--cluster-id",
                self._cluster_id(),
                "--config",
                str(self.config_file),
            ],
            what="formatting Kafka storage",
        )

    # -- running ------------------------------------------------------------

    def _write_config(self) -> None:
        p = self.profile
        props = {
            "process.roles": "broker,controller",
            "node.id": str(_NODE_ID),
            # Static quorum: nothing about the controller address is baked into
            # the formatted storage, so the ports can change between runs.
            "controller.quorum.voters": f"{_NODE_ID}@127.0.0.1:{p.kafka_controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{p.kafka_port},CONTROLLER://127.0.0.1:{p.kafka_controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{p.kafka_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(p.kafka_data_dir),
            "num.partitions": "3",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            # After a crash (kill()) the restarted controller refuses the new
            # broker registration until the old one's session expires (default
            # 9 s); a shorter session makes crash-restart tests ~5 s faster.
            "broker.session.timeout.ms": "4000",
            "broker.heartbeat.interval.ms": "1000",
            # A deleted topic's files go 1 s after the deletion, not 60 s: tests and benchmarks
            # delete their topics when they end, and that disk and CPU work landed in the middle of
            # whatever ran a minute later (a benchmark run right after another: p99 over 1 s).
            "log.segment.delete.delay.ms": "1000",
        }
        p.kafka_dir.mkdir(parents=True, exist_ok=True)
        body = "".join(f"{k}={v}\n" for k, v in props.items())
        self.config_file.write_text(f"# Generated by deploy/localinfra for profile {p.name!r}; do not edit.\n{body}")

    def _java_base_command(self, heap: list[str]) -> list[str]:
        return [
            self._java_path(),
            *heap,
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J2_CONFIG}",
            f"-Dkafka.logs.dir={self.profile.kafka_log_dir}",
            "-cp",
            # The JVM expands the wildcard itself; no shell involved.
            str(self.libs_dir / "*"),
        ]

    def _command(self) -> list[str]:
        return [*self._java_base_command(heap=["-Xmx512m", "-Xms256m"]), "kafka.Kafka", str(self.config_file)]

    def _ports(self) -> list[int]:
        return [self.profile.kafka_port, self.profile.kafka_controller_port]

    def _pid_marker(self) -> str:
        return str(self.config_file)

    def _prepare_start(self) -> None:
        if not self._jars_complete() or not self.is_formatted():
            raise LocalInfraError(f"Kafka for profile {self.profile.name!r} is not provisioned: call provision() first")
        self._write_config()
        self.profile.kafka_log_dir.mkdir(parents=True, exist_ok=True)
        # server.log is appended to by log4j; start each run with a fresh one so
        # the readiness check only sees this run's "Kafka Server started".
        if self.server_log.exists():
            os.replace(self.server_log, self.server_log.with_name("server.log.prev"))

    def _saw_ready_line(self) -> bool:
        try:
            with open(self.server_log, "rb") as fh:
                return _READY_LINE.encode() in fh.read()
        except FileNotFoundError:
            return False

    ready_timeout_s = 120.0
    ready_poll_s = 0.2

    @property
    def address(self) -> str:  # type: ignore[override]
        return self.bootstrap_servers

    def _is_ready(self) -> bool:
        # "Kafka Server started" in server.log, and the client port accepts connections.
        return self._saw_ready_line() and tcp_connectable("127.0.0.1", self.profile.kafka_port)

    def tail(self, lines: int = 40) -> str:
        """Return the last ``lines`` lines of the broker log."""
        return tail_file(self.server_log, lines)
