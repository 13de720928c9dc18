"""Architecture rules, checked: services never import each other, shared knows no service,
domain code does no I/O (import-linter contracts in pyproject.toml)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_linter_contracts_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout


def test_the_project_never_reads_the_guidance_folder():
    offenders = [
        str(p.relative_to(ROOT)) for folder in ("shared", "services", "tahsilat", "tests")
        for p in (ROOT / folder).rglob("*.py")
        if "../shared" in p.read_text(encoding="utf-8") and p.name != "test_architecture.py"
    ]
    assert offenders == []
