"""Reading CIFAR-10 from disk: shapes, pixel order, and clear refusals of missing or hostile files."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TRAIN_ARGS, Exploit, assert_clean_error, cli, write_batch

from cifar_cli.data import FOLDER, load_split
from cifar_cli.errors import CifarError


def test_loads_both_splits_as_hwc_uint8(tiny_data: Path) -> None:
    train, test = load_split(tiny_data, train=True), load_split(tiny_data, train=False)
    assert train.images.shape == (300, 32, 32, 3) and train.images.dtype == np.uint8
    assert test.images.shape == (100, 32, 32, 3)
    assert train.labels.dtype == np.int64 and set(train.labels.tolist()) == set(range(10))


def test_pixels_come_out_where_the_file_put_them(tmp_path: Path) -> None:
    """The files store planes R, G, B (channel-major); the loader must return RGB pixels, not a scramble."""
    folder = tmp_path / FOLDER
    folder.mkdir()
    image = np.zeros((3, 32, 32), np.uint8)
    image[0, 0, 1], image[1, 2, 3], image[2, 31, 30] = 200, 100, 50  # R at (0,1), G at (2,3), B at (31,30)
    batch = {"batch_label": "testing batch 1 of 1", "labels": [7], "data": image.reshape(1, 3072),
             "filenames": ["x.png"]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    split = load_split(tmp_path, train=False)
    assert split.images[0, 0, 1].tolist() == [200, 0, 0]
    assert split.images[0, 2, 3].tolist() == [0, 100, 0]
    assert split.images[0, 31, 30].tolist() == [0, 0, 50]
    assert split.labels.tolist() == [7]


def test_missing_dataset_names_the_path_and_the_flag(tmp_path: Path) -> None:
    with pytest.raises(CifarError, match="--download") as e:
        load_split(tmp_path, train=True)
    assert str(tmp_path / FOLDER / "data_batch_1") in str(e.value)
    assert_clean_error(cli("eval", "no-such.safetensors", "--data-dir", tmp_path), "checkpoint not found")


def _copy(tiny_data: Path, tmp_path: Path) -> Path:
    shutil.copytree(tiny_data / FOLDER, tmp_path / FOLDER)
    return tmp_path / FOLDER


def test_truncated_batch_is_a_clean_error(tiny_data: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_data, tmp_path)
    raw = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CifarError, match="data_batch_3 is corrupt"):
        load_split(tmp_path, train=True)


def test_wrongly_shaped_batch_is_a_clean_error(tiny_data: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_data, tmp_path)
    bad = {"labels": [0, 1], "data": np.zeros((2, 1000), np.uint8)}
    (folder / "test_batch").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(CifarError, match="uint8 N x 3072"):
        load_split(tmp_path, train=False)


def test_malicious_pickle_is_refused_without_running(tiny_data: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_data, tmp_path)
    marker = tmp_path / "pwned"
    (folder / "test_batch").write_bytes(pickle.dumps({"data": Exploit(marker)}, protocol=2))
    with pytest.raises(CifarError, match="refusing to load"):
        load_split(tmp_path, train=False)
    assert not marker.exists()


QUICK = ("--epochs", "1", *TRAIN_ARGS)


# --- dataset folders ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("labels, words", [
    ([[0, 1]], "flat list of whole numbers"), ([0.5, 1.5], "flat list of whole numbers")])
def test_labels_that_are_not_whole_numbers_are_named(tiny_data: Path, tmp_path: Path, labels: list,
                                                      words: str) -> None:
    shutil.copytree(tiny_data / FOLDER, tmp_path / FOLDER)
    images = np.zeros((2, 32, 32, 3), np.uint8)
    batch = {"labels": labels, "data": images.transpose(0, 3, 1, 2).reshape(2, 3072)}
    (tmp_path / FOLDER / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    assert_clean_error(cli("eval", "--data-dir", tmp_path, "--device", "cpu"), "test_batch", words)


def test_an_empty_test_set_is_an_error_not_zero_accuracy(tiny_data: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_data / FOLDER, tmp_path / FOLDER)
    write_batch(tmp_path / FOLDER / "test_batch", np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, int), "empty")
    assert_clean_error(cli("eval", "--data-dir", tmp_path, "--device", "cpu"), "holds no test images")
    assert_clean_error(cli("train", "--data-dir", tmp_path, "--out", tmp_path / "o", *QUICK), "holds no test images")
