"""The README's example program runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_example_runs():
    pytest.importorskip("sklearn", reason="the example's data ship with scikit-learn")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python example"
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    grads = namespace["grads"]
    assert set(grads) == {"log_l2"}
    assert grads["log_l2"].abs().sum() > 0
    assert namespace["engine"].updates == {"penalty": 50, "classifier": 1000}
