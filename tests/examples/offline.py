"""The offline, no-data path of an example, run as a user would: a real subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ..scripts import subprocess_env

ROOT = Path(__file__).resolve().parents[2]


def assert_fails_offline_naming_data_dir(script: Path, missing: Path, *args: str) -> None:
    """No data and no download: exit code 2, a message naming --data-dir, no traceback,
    and no folder left behind (neither the data folder nor the output folder)."""
    out = missing.parent / "out"
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            *args,
            "--data-dir",
            str(missing),
            "--max-steps",
            "1",
            "--no-progress",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "--data-dir" in result.stderr
    assert "--dataset digits" in result.stderr  # the offline way to real images
    assert "Traceback" not in result.stderr
    assert not missing.exists() and not out.exists()
