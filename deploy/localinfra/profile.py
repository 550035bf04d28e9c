"""Profiles: where one set of local infrastructure lives and which ports it uses."""

import os
from dataclasses import dataclass, field
from pathlib import Path

#: Repository root (``deploy/localinfra/profile.py`` -> ``<repo>``).
REPO_ROOT: Path = Path(__file__).resolve().parents[2]

#: Environment variable that overrides the default root (``<repo>/.local``).
ROOT_ENV = "LEASELINE_LOCAL_DIR"
#: Environment variable that puts the download/build cache elsewhere than ``<root>/cache`` (so a
#: throw-away root, a test's say, can reuse the jars and the FerretDB build already there).
CACHE_ENV = "LEASELINE_CACHE_DIR"


def default_root() -> Path:
    """Return the directory holding caches and profile state (``$LEASELINE_LOCAL_DIR`` or ``<repo>/.local``)."""
    override = os.environ.get(ROOT_ENV)
    return Path(override).expanduser().resolve() if override else REPO_ROOT / ".local"


def default_cache() -> Path | None:
    """``$LEASELINE_CACHE_DIR`` when set, else None (the cache is then ``<root>/cache``)."""
    override = os.environ.get(CACHE_ENV)
    return Path(override).expanduser().resolve() if override else None


def _port_from_env(var: str, default: int) -> int:
    raw = os.environ.get(var)
    if raw is None or raw.strip() == "":
        return default
    try:
        port = int(raw)
    except ValueError:
        raise ValueError(f"{var}={raw!r} is not a port number") from None
    if not 0 < port < 65536:
        raise ValueError(f"{var}={port} is outside 1..65535")
    return port


@dataclass(frozen=True)
class Profile:
    """One independent set of local infrastructure (a Kafka broker and a FerretDB).

    State lives under ``<root>/<name>/``; downloads and builds are cached under
    ``<root>/cache/`` (or ``cache``, ``$LEASELINE_CACHE_DIR``) and shared by all profiles.
    """

    name: str
    kafka_port: int
    kafka_controller_port: int
    ferretdb_port: int
    root: Path = field(default_factory=default_root)
    cache: Path | None = field(default_factory=default_cache)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name in {".", "..", "cache"}:
            raise ValueError(f"invalid profile name {self.name!r}")
        ports = (self.kafka_port, self.kafka_controller_port, self.ferretdb_port)
        if len(set(ports)) != len(ports):
            raise ValueError(f"profile {self.name!r} uses the same port twice: {ports}")
        object.__setattr__(self, "root", Path(self.root).expanduser().resolve())
        if self.cache is not None:
            object.__setattr__(self, "cache", Path(self.cache).expanduser().resolve())

    @classmethod
    def run(cls, root: Path | None = None) -> "Profile":
        """Profile for ``make run``.

        Ports come from ``KAFKA_PORT`` (default 9092), ``KAFKA_CONTROLLER_PORT``
        (9093) and ``FERRETDB_PORT`` (27017).
        """
        return cls(
            name="run",
            kafka_port=_port_from_env("KAFKA_PORT", 9092),
            kafka_controller_port=_port_from_env("KAFKA_CONTROLLER_PORT", 9093),
            ferretdb_port=_port_from_env("FERRETDB_PORT", 27017),
            root=root if root is not None else default_root(),
        )

    @classmethod
    def test(cls, root: Path | None = None) -> "Profile":
        """Profile for tests, on ports that never collide with a running ``make run``.

        Ports come from ``TEST_KAFKA_PORT`` (default 19092),
        ``TEST_KAFKA_CONTROLLER_PORT`` (19093) and ``TEST_FERRETDB_PORT`` (27027).
        """
        return cls(
            name="test",
            kafka_port=_port_from_env("TEST_KAFKA_PORT", 19092),
            kafka_controller_port=_port_from_env("TEST_KAFKA_CONTROLLER_PORT", 19093),
            ferretdb_port=_port_from_env("TEST_FERRETDB_PORT", 27027),
            root=root if root is not None else default_root(),
        )

    @classmethod
    def named(cls, name: str, root: Path | None = None) -> "Profile":
        """Return the ready-made profile called ``name`` (``"run"`` or ``"test"``)."""
        if name == "run":
            return cls.run(root)
        if name == "test":
            return cls.test(root)
        raise ValueError(f"unknown profile {name!r}: expected 'run' or 'test'")

    @property
    def dir(self) -> Path:
        """State directory of this profile: ``<root>/<name>``."""
        return self.root / self.name

    @property
    def cache_dir(self) -> Path:
        """Download/build cache shared by all profiles: ``<root>/cache`` unless set elsewhere."""
        return self.cache if self.cache is not None else self.root / "cache"

    @property
    def kafka_dir(self) -> Path:
        """Kafka state of this profile (config, cluster id)."""
        return self.dir / "kafka"

    @property
    def kafka_data_dir(self) -> Path:
        """Kafka ``log.dirs`` (topics, offsets, KRaft metadata); survives restarts."""
        return self.kafka_dir / "data"

    @property
    def kafka_log_dir(self) -> Path:
        """Kafka application logs (``server.log``, ``kafka.out``)."""
        return self.kafka_dir / "logs"

    @property
    def ferretdb_dir(self) -> Path:
        """FerretDB state of this profile."""
        return self.dir / "ferretdb"

    @property
    def ferretdb_data_dir(self) -> Path:
        """FerretDB SQLite databases; survives restarts."""
        return self.ferretdb_dir / "data"

    @property
    def ferretdb_log_dir(self) -> Path:
        """FerretDB logs (``ferretdb.log``)."""
        return self.ferretdb_dir / "logs"
