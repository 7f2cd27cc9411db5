"""Fuzzing the loading paths of `cifar eval` and `cifar train --resume`: every mangled checkpoint is loaded
correctly or refused cleanly.

Hypothesis runs derandomized (a fixed seed), so CI sees the same 1,500 cases every time.
"""

from __future__ import annotations

import copy
import json
import struct
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from conftest import safetensors_header
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cifar_cli.checkpoint import Checkpoint, load_checkpoint, model_from_checkpoint, save_checkpoint
from cifar_cli.errors import CifarError
from cifar_cli.models import ModelSpec, NetConfig, create_model

CASES = 300  # per test below; five tests
FUZZ = settings(max_examples=CASES, derandomize=True, deadline=timedelta(seconds=10), database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SMALL = ModelSpec("cifarnet-ds", NetConfig(widths=(4, 4, 8, 8)).to_dict())


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("fuzz") / "valid.safetensors"
    torch.manual_seed(0)
    save_checkpoint(path, Checkpoint(SMALL, create_model(SMALL).state_dict(), epoch=3, metrics={"test_acc": 0.5}))
    return path.read_bytes()


def _join(header: dict, body: bytes) -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + body


def _loads_or_refuses(raw: bytes, tmp_path: Path) -> None:
    """The property: a CifarError or a working model, nothing else (no other exception, no hang)."""
    path = tmp_path / "case.safetensors"
    path.write_bytes(raw)
    try:
        model = model_from_checkpoint(load_checkpoint(path), path)
    except CifarError as e:
        assert str(e) and "\n" not in str(e)
        return
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 32, 32)).shape[-1] == 10


def test_the_unmangled_file_loads(valid: bytes, tmp_path: Path) -> None:
    path = tmp_path / "ok.safetensors"
    path.write_bytes(valid)
    assert load_checkpoint(path).epoch == 3


@FUZZ
@given(cut=st.integers(min_value=0), flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)),
                                                    max_size=20))
def test_truncated_and_bit_flipped(valid: bytes, tmp_path: Path, cut: int, flips: list[tuple[int, int]]) -> None:
    raw = bytearray(valid[: len(valid) - cut % (len(valid) + 1)] if cut % 3 == 0 else valid)
    for position, value in flips:
        if raw:
            raw[position % len(raw)] = value
    _loads_or_refuses(bytes(raw), tmp_path)


@FUZZ
@given(raw=st.one_of(st.binary(max_size=4096),
                     st.integers(1, 200_000).map(lambda n: struct.pack("<Q", 2 * n) + b"[" * n + b"]" * n),
                     st.binary(max_size=64).map(lambda b: struct.pack("<Q", len(b)) + b),
                     st.integers(min_value=0, max_value=2**64 - 1).map(lambda n: struct.pack("<Q", n) + b"{}")))
def test_random_bytes_and_bad_header_lengths(raw: bytes, tmp_path: Path) -> None:
    _loads_or_refuses(raw, tmp_path)


_DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "NOPE", 7]
_shape = st.lists(st.integers(min_value=-2, max_value=2**40), max_size=5)


@FUZZ
@given(data=st.data())
def test_tensor_entries_with_wrong_dtypes_shapes_and_offsets(valid: bytes, tmp_path: Path,
                                                               data: st.DataObject) -> None:
    header, body = safetensors_header(valid)
    names = sorted(k for k in header if k != "__metadata__")
    for name in data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=4, unique=True)):
        entry = header[name]
        field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "drop"]))
        if field == "dtype":
            entry["dtype"] = data.draw(st.sampled_from(_DTYPES))
        elif field == "shape":
            entry["shape"] = data.draw(_shape)
        elif field == "data_offsets":
            entry["data_offsets"] = data.draw(st.lists(st.integers(min_value=-5, max_value=len(body) + 5),
                                                       min_size=0, max_size=3))
        else:
            del header[name]
    _loads_or_refuses(_join(header, body), tmp_path)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20)
_configs = st.fixed_dictionaries({}, optional={
    "channels": st.integers(min_value=-2, max_value=10**6) | _json_values,
    "widths": st.lists(st.integers(min_value=-2, max_value=10**6) | st.booleans(), max_size=6) | _json_values,
    "num_classes": st.integers(min_value=-5, max_value=10**12) | _json_values,
    "dropout": st.floats(allow_nan=True) | _json_values,
    "extra": _json_values,
})


@FUZZ
@given(data=st.data())
def test_metadata_that_is_not_json_or_names_another_architecture(valid: bytes, tmp_path: Path,
                                                                   data: st.DataObject) -> None:
    header, body = safetensors_header(valid)
    meta = header["__metadata__"]
    key = data.draw(st.sampled_from([*sorted(meta), "train_state"]))
    choice = data.draw(st.sampled_from(["text", "json", "config", "drop", "not-a-dict"]))
    if choice == "text":
        meta[key] = data.draw(st.text(max_size=40))
    elif choice == "json":
        meta[key] = json.dumps(data.draw(_json_values))
    elif choice == "config":  # a preset with forged settings, or a user network (never imported)
        name = data.draw(st.sampled_from(["cifarnet-ds", "s9-reference", "net.py:Net", "os:system"]) | st.text())
        meta["model"] = json.dumps({"name": name, "config": data.draw(_configs), "class": data.draw(_json_values)})
    elif choice == "drop":
        meta.pop(key, None)
    else:
        header["__metadata__"] = data.draw(_json_values)
    _loads_or_refuses(_join(header, body), tmp_path)


# --- the resume path: a forged value anywhere in the training state is refused in one line or resumes --------

@pytest.fixture(scope="module")
def resumable(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, object]:
    from cifar_cli.data import load_split
    from cifar_cli.settings import TrainSettings
    from cifar_cli.training.loop import train

    out = tmp_path_factory.mktemp("resumable")
    split = load_split(tiny_data, train=True)
    train(TrainSettings(epochs=1, batch_size=64, lr=0.05, val_split=50), split, None, out, torch.device("cpu"),
          model_spec=SMALL)
    return (out / "last.safetensors").read_bytes(), split


def _paths(value: object, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON value: dict keys and list indices, leaves and containers alike."""
    places = [prefix] if prefix else []
    if isinstance(value, dict):
        places += [p for k, v in value.items() for p in _paths(v, (*prefix, k))]
    elif isinstance(value, list):
        places += [p for i, v in enumerate(value) for p in _paths(v, (*prefix, i))]
    return places


_forged_values = _json_values | st.sampled_from([10**400, -(10**30), 2**63, float("nan"), float("inf"), -1, 0, 1e308,
                                                 1e-308, "²", "٣", "0.x", True, [], {}, [[0, 0, 0]] * 3])


@FUZZ
@given(data=st.data())
def test_forged_training_state_fields_resume_or_are_refused(resumable: tuple[bytes, object], tmp_path: Path,
                                                             data: st.DataObject) -> None:
    from cifar_cli.checkpoint import network_spec
    from cifar_cli.data import hold_out
    from cifar_cli.run_state import Resume, RunState, check_data
    from cifar_cli.runtime import Distributed, Runtime
    from cifar_cli.training.trainer import build_trainer

    raw, split = resumable
    header, body = safetensors_header(raw)
    state = json.loads(header["__metadata__"]["train_state"])
    for _ in range(data.draw(st.integers(1, 3))):
        *parents, last = data.draw(st.sampled_from(_paths(state)))
        holder = state
        for key in parents:
            holder = holder[key]
        holder[last] = copy.deepcopy(data.draw(_forged_values))  # the strategy's lists are shared: keep them as drawn
    header["__metadata__"]["train_state"] = json.dumps(state)
    path = tmp_path / "forged.safetensors"
    path.write_bytes(_join(header, body))
    try:
        ckpt = load_checkpoint(path)
        run = RunState.resume(ckpt)
        run.data = check_data(run.data, {"train": split})
        trained_on = hold_out(split, run.settings.val_split)[0] if run.settings.val_split < len(split) else split
        trainer = build_trainer(run.settings, network_spec(ckpt, None), trained_on, torch.device("cpu"), Runtime(),
                                Distributed(), Resume(ckpt, run))
        run.check_position(trainer.steps_per_epoch, 1)
    except CifarError as e:
        assert str(e) and "\n" not in str(e)
