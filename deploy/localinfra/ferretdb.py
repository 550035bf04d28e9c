"""FerretDB (MongoDB wire protocol on SQLite), embedded in a small Go program built from source."""

import hashlib
import json
import os
import re
import shutil
import stat
from pathlib import Path

from ._base import LocalInfraError, ManagedProcess, file_lock, require_tool, run_tool, tail_file
from ._mongowire import hello
from .profile import REPO_ROOT

FERRETDB_SRC_DIR = REPO_ROOT / "deploy" / "ferretdb"
#: Our fixes to FerretDB, applied (``patch -p1``) to a copy of its module before the build.
PATCHES_DIR = FERRETDB_SRC_DIR / "patches"
BINARY_NAME = "leaseline-ferretdb"
FERRETDB_MODULE = "github.com/FerretDB/FerretDB"

_SOURCES = ("main.go", "go.mod", "go.sum")
_READY_LINE = "leaseline-ferretdb ready"
_GO_HINT = "install Go 1.24 or newer (https://go.dev/dl/); it is only needed once, to build FerretDB"
_PATCH_HINT = "install GNU patch (e.g. `apt-get install patch`); it is only needed once, to build FerretDB"


def _ferretdb_version() -> str:
    match = re.search(rf"^require {re.escape(FERRETDB_MODULE)} (v\S+)$", (FERRETDB_SRC_DIR / "go.mod").read_text(), re.M)
    if not match:
        raise LocalInfraError(f"deploy/ferretdb/go.mod does not require {FERRETDB_MODULE} on a line of its own")
    return match.group(1)


class LocalFerretDB(ManagedProcess):
    """A local FerretDB server for one :class:`Profile`, storing data in SQLite files.

    ``provision()`` builds ``deploy/ferretdb`` once (cached); the data directory
    survives ``stop()``/``start()``.
    """

    component = "ferretdb"

    @property
    def uri(self) -> str:
        """MongoDB connection string: ``"mongodb://127.0.0.1:<port>/"``."""
        return f"mongodb://127.0.0.1:{self.profile.ferretdb_port}/"

    @property
    def binary(self) -> Path:
        """Cached server binary: ``<root>/cache/bin/leaseline-ferretdb``."""
        return self.profile.cache_dir / "bin" / BINARY_NAME

    @property
    def stdout_log(self) -> Path:
        """The server's log (stdout and stderr)."""
        return self.profile.ferretdb_log_dir / "ferretdb.log"

    @property
    def logs(self) -> list[Path]:
        """Log files of this component."""
        return [self.stdout_log]

    # -- provisioning -------------------------------------------------------

    def _sources_digest(self) -> str:
        digest = hashlib.sha256()
        sources = sorted(FERRETDB_SRC_DIR.glob("*.go")) + [FERRETDB_SRC_DIR / n for n in _SOURCES[1:]]
        for path in sources + sorted(PATCHES_DIR.glob("*.patch")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
        return digest.hexdigest()

    def _binary_fresh(self) -> bool:
        # A content digest, not mtimes: a fresh clone's files are all "new", and a cached binary
        # built from other sources must not be taken for current.
        stamp = self.binary.with_name(self.binary.name + ".sources")
        return self.binary.exists() and stamp.exists() and stamp.read_text() == self._sources_digest()

    def provision(self) -> None:
        """Build the FerretDB binary if it is missing or was built from other sources."""
        if self._binary_fresh():
            return
        with file_lock(self.profile.cache_dir / f".{self.component}.lock"):
            if self._binary_fresh():
                return
            go = require_tool("go", _GO_HINT)
            self.binary.parent.mkdir(parents=True, exist_ok=True)
            modfile = self._patched_modfile(go)
            staging = self.binary.with_name(f"{BINARY_NAME}.tmp-{os.getpid()}")
            # -buildvcs=false: VCS stamping would shell out to git for the
            # enclosing repository (and can fail on "dubious ownership").
            try:
                run_tool(
                    [go, "build", f"-modfile={modfile}", "-trimpath", "-buildvcs=false", "-o", str(staging), "."],
                    what="building FerretDB",
                    cwd=FERRETDB_SRC_DIR,
                )
                os.replace(staging, self.binary)
                self.binary.with_name(self.binary.name + ".sources").write_text(self._sources_digest())
            finally:
                staging.unlink(missing_ok=True)

    def _patched_modfile(self, go: str) -> Path:
        """A copy of FerretDB's module with our patches applied, and a go.mod that builds against it.

        The repository's go.mod stays the plain upstream one; the build uses ``-modfile`` with a
        ``replace`` pointing at the patched copy (kept in the cache, keyed by the patches' digest)."""
        version = _ferretdb_version()
        patches = sorted(PATCHES_DIR.glob("*.patch"))
        key = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in patches)).hexdigest()[:16]
        build_dir = self.profile.cache_dir / "ferretdb-build"
        source = build_dir / f"FerretDB-{version}-{key}"
        if not (source / ".complete").exists():
            listing = run_tool([go, "mod", "download", "-json", f"{FERRETDB_MODULE}@{version}"],
                               what="downloading FerretDB's source", cwd=FERRETDB_SRC_DIR)
            upstream = Path(json.JSONDecoder().raw_decode(listing[listing.index("{"):])[0]["Dir"])
            shutil.rmtree(source, ignore_errors=True)
            shutil.copytree(upstream, source)
            for path in [source, *source.rglob("*")]:  # the module cache is read-only
                path.chmod(path.stat().st_mode | stat.S_IWUSR)
            patch = require_tool("patch", _PATCH_HINT) if patches else ""
            for patch_file in patches:
                run_tool([patch, "-p1", "--forward", "--batch", "-d", str(source), "-i", str(patch_file)],
                         what=f"applying {patch_file.name} to FerretDB {version}")
            (source / ".complete").write_text(version + "\n")
        modfile = build_dir / "go.mod"
        modfile.write_text(
            (FERRETDB_SRC_DIR / "go.mod").read_text() + f"\nreplace {FERRETDB_MODULE} => {source}\n"
        )
        shutil.copyfile(FERRETDB_SRC_DIR / "go.sum", build_dir / "go.sum")
        return modfile

    # -- running ------------------------------------------------------------

    def is_stale(self) -> bool:
        pid = self.pid
        if pid is None:
            return False
        try:
            running = os.readlink(f"/proc/{pid}/exe")
        except OSError:  # no /proc (macOS): cannot tell
            return False
        # A rebuild replaces the file: the old process's executable shows as "(deleted)".
        return running.endswith(" (deleted)") or Path(running) != self.binary.resolve()

    def _command(self) -> list[str]:
        return [
            str(self.binary),
            "-listen-addr",
            f"127.0.0.1:{self.profile.ferretdb_port}",
            "-data-dir",
            str(self.profile.ferretdb_data_dir),
        ]

    def _ports(self) -> list[int]:
        return [self.profile.ferretdb_port]

    def _pid_marker(self) -> str:
        return str(self.profile.ferretdb_data_dir)

    def _prepare_start(self) -> None:
        if not self.binary.exists():
            raise LocalInfraError(f"FerretDB is not built ({self.binary} missing): call provision() first")
        self.profile.ferretdb_data_dir.mkdir(parents=True, exist_ok=True)

    def _saw_ready_line(self) -> bool:
        try:
            with open(self.stdout_log, "rb") as fh:
                return _READY_LINE.encode() in fh.read()
        except FileNotFoundError:
            return False

    def _answers_hello(self) -> bool:
        try:
            reply = hello("127.0.0.1", self.profile.ferretdb_port, timeout=2.0)
        except (OSError, ValueError, IndexError):
            return False
        return reply.get("ok") in (1, 1.0, True)

    ready_timeout_s = 60.0

    @property
    def address(self) -> str:  # type: ignore[override]
        return self.uri

    def _is_ready(self) -> bool:
        # Its ready line logged, and a hello answered with ok: 1 (which proves the TCP connect too).
        return self._saw_ready_line() and self._answers_hello()

    def tail(self, lines: int = 40) -> str:
        """Return the last ``lines`` lines of the server log."""
        return tail_file(self.stdout_log, lines)
