"""The compose files validate against the current Compose Specification (offline)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FILES = [ROOT / "docker-compose.yml", *sorted((ROOT / "infra" / "compose").glob("*.yml"))]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_compose_file_matches_the_compose_spec(path):
    tool = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert tool, "check-jsonschema is a pinned test dependency"
    result = subprocess.run([tool, "--builtin-schema", "vendor.compose-spec", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_compose_file_is_rejected(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  x:\n    image: 5\n    ports: {not: a list}\n")
    tool = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert tool, "check-jsonschema is a pinned test dependency"
    result = subprocess.run([tool, "--builtin-schema", "vendor.compose-spec", str(broken)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
