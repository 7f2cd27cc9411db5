"""`cifar train --tensorboard`: the events read back with TensorBoard's own reader equal history.json, a
resumed run adds to them without repeating an epoch, only rank 0 writes, and without the [tensorboard]
extra the option is one line before anything starts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TRAIN_ARGS, assert_clean_error, cli

from cifar_cli import api, tensorboard_log
from cifar_cli.errors import CifarError
from cifar_cli.run_folder import resume_argv
from cifar_cli.training import session

SMALL = ("--model", "s9-reference", *TRAIN_ARGS)  # the smallest preset (`cifar models`)
NEEDS_TENSORBOARD = "the [tensorboard] extra (pip install 'cifar-cli[tensorboard]') reads the events back"


def _events(out: Path) -> object:
    pytest.importorskip("tensorboard", reason=NEEDS_TENSORBOARD)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def _assert_scalars_are_the_history(out: Path) -> object:
    """Every scalar tag holds each epoch exactly once, with history.json's value (events store float32)."""
    events = _events(out)
    history = json.loads((out / "history.json").read_text())
    fields = {"lr": "lr", "seconds": "seconds"} | {f"{kind}/{split}": f"{split}_{'acc' if kind == 'accuracy' else kind}"
                                                   for kind in ("loss", "accuracy") for split in ("train", "test")}
    assert sorted(events.Tags()["scalars"]) == sorted(fields)
    for tag, field in fields.items():
        written = [(e.step, e.value) for e in events.Scalars(tag)]
        assert written == [(r["epoch"], float(np.float32(r[field]))) for r in history], tag
    return events


def test_without_the_extra_the_option_is_one_line_before_anything_starts(tiny_data: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    out = tmp_path / "run"
    result = cli("train", "--tensorboard", "--epochs", "1", "--data-dir", tiny_data, "--out", out, *SMALL)
    assert_clean_error(result, "cifar train --tensorboard needs tensorboard", "pip install 'cifar-cli[tensorboard]'")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_events_equal_the_history_and_a_resume_after_a_crash_repeats_no_epoch(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Epoch 2's events are written, then the run dies before saving epoch 2: the resumed run judges epoch 2
    again, and the reader shows its second judging alone (its own `seconds`, as history.json has them)."""
    pytest.importorskip("tensorboard", reason=NEEDS_TENSORBOARD)
    monkeypatch.setattr(tensorboard_log, "CONFUSION_EVERY", 2)
    out, saved = tmp_path / "run", session.write_history

    def dies_at_epoch_2(path: Path, history: list) -> None:
        if len(history) == 2:
            raise CifarError("the machine went down")
        saved(path, history)

    monkeypatch.setattr(session, "write_history", dies_at_epoch_2)
    crashed = cli("train", "--tensorboard", "--epochs", "3", "--data-dir", tiny_data, "--out", out, *SMALL)
    assert crashed.exit_code == 2 and "went down" in crashed.stderr
    assert [e.step for e in _events(out).Scalars("loss/train")] == [1, 2]  # epoch 2 written, not saved
    monkeypatch.setattr(session, "write_history", saved)

    resumed = cli("train", "--resume", out, "--tensorboard", "--data-dir", tiny_data, "--device", "cpu")
    assert resumed.exit_code == 0, resumed.stderr
    events = _assert_scalars_are_the_history(out)
    assert [(e.step, e.width > 100) for e in events.Images("confusion/test")] == [(2, True), (3, True)]

    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    content = events.PluginTagToContent("hparams")
    started = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert started.hparams["model"].string_value == "s9-reference"
    assert started.hparams["lr"].number_value == 0.05 and started.hparams["epochs"].number_value == 3
    metrics = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment.metric_infos
    assert {m.name.tag for m in metrics} == {"loss/train", "accuracy/train", "loss/test", "accuracy/test"}


def test_the_resume_command_keeps_the_option() -> None:
    assert resume_argv(Path("run/last.safetensors"), tensorboard=True)[-1] == "--tensorboard"


def test_a_new_run_refuses_an_earlier_runs_events(tiny_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason=NEEDS_TENSORBOARD)
    (tmp_path / "run" / "tensorboard").mkdir(parents=True)
    (tmp_path / "run" / "tensorboard" / "events.out.tfevents.1.host.1.0").write_bytes(b"")
    result = cli("train", "--tensorboard", "--data-dir", tiny_data, "--out", tmp_path / "run", *SMALL)
    assert_clean_error(result, "holds the TensorBoard events of an earlier run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["tensorboard"]


def test_the_python_api_writes_the_same_events(tiny_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason=NEEDS_TENSORBOARD)
    with pytest.raises(CifarError, match="pass out="):
        api.train("s9-reference", epochs=1, data_dir=tiny_data, tensorboard=True, progress=False)
    api.train("s9-reference", epochs=1, data_dir=tiny_data, out=tmp_path / "run", device="cpu", batch_size=32,
              tensorboard=True, progress=False)
    _assert_scalars_are_the_history(tmp_path / "run")


def test_only_rank_0_writes_events(tiny_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason=NEEDS_TENSORBOARD)
    from test_distributed import _torchrun

    done = _torchrun("--epochs", "1", "--batch-size", "16", "--lr", "0.05", "--model", "s9-reference",
                     "--data-dir", str(tiny_data), "--out", str(tmp_path / "ddp"), "--tensorboard")
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((tmp_path / "ddp" / "tensorboard").iterdir())) == 1
    _assert_scalars_are_the_history(tmp_path / "ddp")
