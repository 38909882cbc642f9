"""The tree is ruff-formatted and lint-clean (what pre-commit enforces)."""

import shutil
import subprocess

import pytest

from tests.helpers import ROOT


def ruff(*args: str) -> subprocess.CompletedProcess:
    executable = shutil.which("ruff", path=str(ROOT / ".venv" / "bin")) or shutil.which("ruff")
    if executable is None:
        pytest.fail("ruff is not installed: pip install -e '.[dev]'")
    return subprocess.run([executable, *args, str(ROOT)], capture_output=True, text=True, cwd=ROOT)


def test_ruff_check():
    result = ruff("check", "--no-cache")
    assert result.returncode == 0, result.stdout[-3000:]


def test_ruff_format():
    result = ruff("format", "--check", "--no-cache")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
