"""The architecture rules (pyproject.toml, import-linter) checked by plain pytest, not only by
``make lint``: a service importing another fails the test suite."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(cwd: Path, config: Path) -> subprocess.CompletedProcess[str]:
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS} missing: install the dev dependencies (make install)"
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(config), "--no-cache"],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(cwd)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_services_never_import_each_other_and_shared_never_imports_a_service() -> None:
    result = lint_imports(ROOT, ROOT / "pyproject.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken" in result.stdout


def test_the_rules_catch_a_service_that_imports_another(tmp_path: Path) -> None:
    """The same contracts, run on a small tree where identity imports notifications."""
    for package in ("shared", "services", *(f"services/{n}" for n in
                    ("identity", "contracts", "restitution", "notifications", "consent"))):
        (tmp_path / package).mkdir(parents=True, exist_ok=True)
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "services" / "identity" / "wiring.py").write_text("from services.notifications import templates\n")
    (tmp_path / "services" / "notifications" / "templates.py").write_text("")
    config = tmp_path / "pyproject.toml"
    config.write_text((ROOT / "pyproject.toml").read_text())  # the very contracts the project uses

    result = lint_imports(tmp_path, config)
    assert result.returncode != 0, result.stdout
    assert "services.identity.wiring -> services.notifications.templates" in result.stdout
