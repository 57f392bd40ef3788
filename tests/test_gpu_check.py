"""scripts/gpu_check.py (run on a GPU machine, not in CI) must keep working: here it compares the
CPU with itself on a few methods and metrics, where every row must be ok or n/a."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def test_gpu_check_passes_cpu_against_cpu(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = gpu_check  # its dataclasses look their module up
    spec.loader.exec_module(gpu_check)
    out = tmp_path / "rows.json"
    code = gpu_check.main(
        [
            "--device", "cpu", "--quick", "--models", "shapes_cnn",
            "--methods", "saliency,gradcam,lime,expected_gradients",
            "--metrics", "deletion,sparseness", "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().out[-2000:]
    rows = json.loads(out.read_text())
    statuses = {r["status"] for r in rows}
    assert statuses <= {"ok", "n/a"} and "ok" in statuses
    names = {r["name"] for r in rows}
    assert {"saliency", "lime", "deletion[saliency]"} <= names
