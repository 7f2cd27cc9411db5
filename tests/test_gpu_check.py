"""benchmarks/gpu_check.py, the one-shot check of the CUDA path for when a GPU is lent, checked by its dry run:
the whole script on the CPU on tiny data it generates. Every step must be recorded with a status (the
CUDA-only ones skipped, saying so), every output it names must be there, and the runs must have trained."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "benchmarks" / "gpu_check.py"
STEPS = ["1-cuda-tests", "2-sync-bf16", "2-sync-fp16", "3-t4-fp32", "3-t4-bf16", "3-t4-fp16-stopped",
         "3-t4-resumed-bf16", "4-throughput", "5-train"]
NO_CUDA = "skipped (no CUDA)"


def gpu_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), *args], capture_output=True, text=True, cwd=ROOT)


def test_the_dry_run_records_every_step_with_its_outputs(tmp_path: Path) -> None:
    out = tmp_path / "check"
    done = gpu_check("--dry-run", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["steps"]) == STEPS
    for name, step in summary["steps"].items():
        assert step["status"] in ("passed", NO_CUDA), f"{name}: {step['status']}: {step['error']}"
        for output in step["outputs"]:
            assert (out / output).exists(), f"{name}: {output} is missing"
    steps = summary["steps"]
    assert steps["1-cuda-tests"]["status"] == NO_CUDA  # the dry run is the CPU's, even where CUDA is
    assert steps["3-t4-fp16-stopped"]["details"]["epochs"] < steps["3-t4-resumed-bf16"]["details"]["epochs"]
    assert steps["3-t4-resumed-bf16"]["details"]["epochs"] == summary["sizes"]["short_epochs"]
    assert 0 <= steps["5-train"]["details"]["test_acc"] <= 1
    assert steps["4-throughput"]["details"]["step_compiled"] == NO_CUDA
    assert steps["4-throughput"]["details"]["device_images_per_s"] > 0
    assert "torch" in summary["environment"] and (out / "0-environment.log").is_file()


def test_a_folder_that_holds_a_check_is_never_written_over(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text("{}")
    done = gpu_check("--dry-run", "--out", str(tmp_path))
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    assert (tmp_path / "summary.json").read_text() == "{}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="refusing a machine without CUDA needs one")
def test_the_real_check_refuses_a_machine_without_cuda_in_one_line(tmp_path: Path) -> None:
    done = gpu_check("--out", str(tmp_path / "check"))
    assert done.returncode == 2 and "--dry-run" in done.stderr and done.stderr.count("\n") == 1
