"""Any network, not only ours: presets by name, and the user's own network file in every command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CANDIDATES, TRAIN_ARGS, assert_clean_error, cli, safetensors_header, write_network
from PIL import Image
from safetensors.torch import load_file, save_file

from cifar_cli.augment import normalize
from cifar_cli.data import load_split
from cifar_cli.models import PRESETS, create_model, preset_spec
from cifar_cli.models.layers import whitening_filters

# A student's own network that keeps every rule: C1..C4, BatchNorm, a depthwise-separable and a dilated
# convolution, no max-pooling, global average pooling, receptive field 51.
GOOD = """
def block(cin, cout, stride=1, dilation=1):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())

class Net(nn.Module):
    def __init__(self, width=16):
        super().__init__()
        self.c1 = block(3, width)
        self.c2 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False),
                                nn.Conv2d(width, 2 * width, 1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
                                block(2 * width, 2 * width, stride=2))
        self.c3 = nn.Sequential(block(2 * width, 2 * width, dilation=2), block(2 * width, 3 * width, stride=2))
        self.c4 = nn.Sequential(block(3 * width, 3 * width, dilation=3), block(3 * width, 3 * width, stride=2))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3 * width, 10)

    def forward(self, x):
        return self.fc(self.gap(self.c4(self.c3(self.c2(self.c1(x))))).flatten(1))
"""


def test_models_lists_every_preset_with_its_figures() -> None:
    result = cli("models", "--json")
    assert result.exit_code == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)["models"]}
    assert set(rows) == set(PRESETS) >= {"cifarnet-ds", "s9-reference"}
    assert rows["s9-reference"]["parameters"] == 99_912 and rows["cifarnet-ds"]["parameters"] == 182_442
    assert rows["s9-reference"]["receptive_field"] == 59 and rows["cifarnet-ds"]["receptive_field"] == 93
    assert all(r["passed"] and r["description"] for r in rows.values())
    table = cli("models")
    assert table.exit_code == 0 and "s9-reference" in table.stdout and "99,912" in table.stdout


# name: (output shape from a 32x32 input, parameters), from the reference network's published layer table
S9_TABLE = {
    "c1.conv1": ((19, 32, 32), 551), "c1.conv2": ((19, 32, 32), 3_287), "c1.conv3": ((38, 15, 15), 6_574),
    "c1.trans1": ((19, 15, 15), 722), "c2.conv4": ((38, 15, 15), 6_574), "c2.conv5": ((38, 15, 15), 13_072),
    "c2.conv6": ((38, 11, 11), 13_072), "c2.trans2": ((19, 11, 11), 722), "c3.conv7": ((38, 11, 11), 969),
    "c3.conv8": ((38, 11, 11), 13_072), "c3.conv9": ((38, 3, 3), 13_072), "c3.trans3": ((19, 3, 3), 722),
    "c4.conv10": ((38, 3, 3), 969), "c4.conv11": ((38, 3, 3), 13_072), "c4.conv12": ((38, 1, 1), 13_072),
    "fc": ((10,), 390),
}


def test_s9_reference_is_the_reference_network_layer_for_layer() -> None:
    model = create_model(preset_spec("s9-reference")).eval()
    modules = dict(model.named_modules())
    shapes = {}
    hooks = [modules[name].register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, o.shape[1:]))
             for name in S9_TABLE]
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    for name, (shape, params) in S9_TABLE.items():
        assert tuple(shapes[name]) == shape, name
        assert sum(p.numel() for p in modules[name].parameters()) == params, name
    assert sum(p.numel() for p in model.parameters()) == 99_912

    summary = json.loads(cli("summary", "--model", "s9-reference", "--json").stdout)
    assert summary["parameters"] == 99_912 and summary["passed"]
    figures = {r["name"]: r["figure"] for r in summary["rules"]}
    assert figures[">= 1 dilated conv"] == "2 dilated convolutions (c2.conv6.0, c3.conv9.0)"
    assert figures[">= 1 depthwise-separable conv"] == "2 depthwise -> pointwise (first: c3.conv7.0 -> c3.conv7.1)"
    assert figures["receptive field > 44"] == "59 pixels"


def test_a_users_network_that_keeps_the_rules(tmp_path: Path) -> None:
    spec = write_network(tmp_path / "net.py", GOOD)
    result = cli("summary", "--model", spec)
    assert result.exit_code == 0, result.stderr
    assert "All rules pass." in result.stdout and "Total mult-adds:" in result.stdout
    rf = json.loads(cli("receptive-field", "--model", spec, "--json").stdout)
    assert rf["total"] == 51 and rf["layers"][0]["name"] == "c1.0"


@pytest.mark.parametrize("body, exit_code, words", [
    (GOOD.replace("self.c4 = nn.Sequential(", "self.c4 = nn.Sequential(nn.MaxPool2d(1), "), 1,
     ["Fails 1 rule", "no max-pooling"]),
    (GOOD.replace("def __init__(self, width=16)", "def __init__(self, width=80)"), 1,
     ["Fails 1 rule", "parameters < 200,000"]),
    (GOOD.replace(".flatten(1))\n", ".flatten(1))[:, :5]\n"), 2, ["net.py:Net", "gave (2, 5)", "expected (2, 10)"]),
    (GOOD.replace("self.fc = nn.Linear(3 * width, 10)", "self.fc = nn.Linear(3 * width * 16, 10)"), 2,
     ["net.py:Net", "forward pass on a 2 x 3 x 32 x 32 batch raised RuntimeError"]),
    ("raise ImportError('no module named keras')\n", 2, ["net.py", "importing", "ImportError: no module named keras"]),
    ("def Net():\n    return 'a network'\n", 2, ["net.py:Net", "returned a str, not a torch nn.Module"]),
    ("x = 1\n", 2, ["has no class or function named Net"]),
])
def test_a_users_network_that_breaks_something(tmp_path: Path, body: str, exit_code: int, words: list[str]) -> None:
    result = cli("summary", "--model", write_network(tmp_path / "net.py", body))
    assert result.exit_code == exit_code, (result.stdout, result.stderr)
    assert result.exception is None and "Traceback" not in result.stdout + result.stderr
    text = " ".join((result.stdout + result.stderr).split())
    assert all(w in text for w in words), text
    if exit_code == 2:
        assert_clean_error(result)


def test_receptive_field_names_what_it_cannot_reason_about(tmp_path: Path) -> None:
    upsampled = GOOD.replace("self.c4 = nn.Sequential(", "self.c4 = nn.Sequential(nn.Upsample(scale_factor=2), ")
    assert_clean_error(cli("receptive-field", "--model", write_network(tmp_path / "up.py", upsampled)),
                       "cannot work out what 'c4.0' (interpolate) does to positions")
    summary = cli("summary", "--model", f"{tmp_path / 'up.py'}:Net")  # the rule fails and says why
    assert summary.exit_code == 1 and "receptive field > 44" in summary.stdout


def test_pooling_called_in_a_forward_is_read_like_a_pooling_layer(tmp_path: Path) -> None:
    pooled_in_forward = GOOD.replace("self.c4(self.c3(", "self.c4(F.avg_pool2d(self.c3(")
    pooled_in_forward = pooled_in_forward.replace("self.c1(x))))", "self.c1(x))), 3, 1, 1))")
    rf = json.loads(cli("receptive-field", "--model", write_network(tmp_path / "fp.py", pooled_in_forward),
                        "--json").stdout)
    pool = next(layer for layer in rf["layers"] if layer["name"] == "forward: avg_pool2d")
    assert (pool["kernel"], pool["stride"], pool["padding"]) == (3, 1, 1)
    assert rf["total"] == 51 + 2 * pool["jump_in"]  # a 3x3 window adds 2 x jump, like a 3x3 convolution


def test_unknown_models_are_one_line_errors() -> None:
    assert_clean_error(cli("summary", "--model", "resnet50"), "--model resnet50", "cifarnet-ds", "s9-reference")
    assert_clean_error(cli("summary", "--model", "missing.py:Net"), "network file not found: missing.py")
    assert_clean_error(cli("summary", "--model", "no_such_package.nets:Net"), "importing no_such_package.nets")


@pytest.fixture(scope="module")
def user_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("user")
    spec = write_network(folder / "net.py", GOOD)
    result = cli("train", "--model", spec, "--epochs", "2", "--data-dir", tiny_data, "--out", folder / "run",
                 *TRAIN_ARGS)
    assert result.exit_code == 0, result.stderr
    return folder / "run", spec


def test_train_eval_and_predict_a_users_network(user_run: tuple[Path, str], tiny_data: Path, tmp_path: Path) -> None:
    run, spec = user_run
    meta = safetensors_header((run / "last.safetensors").read_bytes())[0]["__metadata__"]
    recorded = json.loads(meta["model"])
    source = Path(spec.rpartition(":")[0])
    import hashlib

    assert recorded == {"name": spec, "class": "Net", "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest()}
    assert json.loads((run / "settings.json").read_text())["model"] == recorded

    report = cli("eval", run / "last.safetensors", "--model", spec, "--data-dir", tiny_data, "--device", "cpu",
                 "--json")
    assert report.exit_code == 0, report.stderr
    history = json.loads((run / "history.json").read_text())
    assert json.loads(report.stdout)["accuracy"] == pytest.approx(history[-1]["test_acc"])

    picture = tmp_path / "x.png"
    Image.fromarray(load_split(tiny_data, train=False).images[0]).save(picture)
    predicted = cli("predict", picture, "--checkpoint", run / "last.safetensors", "--model", spec, "--json")
    assert predicted.exit_code == 0 and len(json.loads(predicted.stdout)["predictions"][0]["top"]) == 3


def test_a_users_checkpoint_needs_the_users_model(user_run: tuple[Path, str], tiny_data: Path,
                                                  tmp_path: Path) -> None:
    run, spec = user_run
    assert_clean_error(cli("eval", run / "last.safetensors", "--data-dir", tiny_data),
                       "never imports code that a checkpoint names", f"--model {spec}")
    wider = write_network(tmp_path / "wider.py", GOOD.replace("width=16", "width=24"))
    assert_clean_error(cli("eval", run / "last.safetensors", "--model", wider, "--data-dir", tiny_data),
                       "does not match", "c1.0.weight")
    assert_clean_error(cli("eval", run / "last.safetensors", "--model", "s9-reference", "--data-dir", tiny_data),
                       "does not match")

    changed = tmp_path / "changed.py"
    changed.write_text(Path(spec.rpartition(":")[0]).read_text() + "\n# tidied up after training\n")
    result = cli("eval", run / "last.safetensors", "--model", f"{changed}:Net", "--data-dir", tiny_data,
                 "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert "warning:" in result.stderr and "has changed since" in " ".join(result.stderr.split())


def test_a_checkpoint_naming_a_module_imports_nothing(trained_run: Path, tiny_data: Path, tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "planted_module.py").write_text(f"open({str(marker)!r}, 'w').close()\nsystem = print\n")
    sys.path.insert(0, str(tmp_path))
    try:
        tensors = load_file(trained_run / "best.safetensors")
        meta = safetensors_header((trained_run / "best.safetensors").read_bytes())[0]["__metadata__"]
        for name in ("os:system", "planted_module:system", f"{tmp_path / 'planted_module.py'}:system"):
            forged = tmp_path / "forged.safetensors"
            save_file(tensors, forged, metadata={**meta, "model": json.dumps({"name": name, "class": "Net"})})
            assert_clean_error(cli("eval", forged, "--data-dir", tiny_data), f"--model {name}")
            assert_clean_error(cli("train", "--resume", forged, "--data-dir", tiny_data), "resume")
    finally:
        sys.path.remove(str(tmp_path))
    assert not marker.exists() and "planted_module" not in sys.modules


def test_s9_reference_trains_and_evaluates_from_the_file_alone(tiny_data: Path, tmp_path: Path) -> None:
    result = cli("train", "--model", "s9-reference", "--epochs", "1", "--data-dir", tiny_data, "--out", tmp_path,
                 *TRAIN_ARGS)
    assert result.exit_code == 0, result.stderr
    report = cli("eval", tmp_path / "best.safetensors", "--data-dir", tiny_data, "--device", "cpu", "--json")
    assert report.exit_code == 0, report.stderr
    assert np.isclose(json.loads(report.stdout)["accuracy"], json.loads((tmp_path / "history.json").read_text())[0]
                      ["test_acc"])
    assert_clean_error(cli("eval", tmp_path / "best.safetensors", "--model", "cifarnet-ds", "--data-dir", tiny_data),
                       "holds s9-reference, not cifarnet-ds")


@pytest.mark.parametrize("name", ["wide48", "post_activation", "lean_deep", "deep_c3", "deep_c2", "c4_at_8x8",
                                  "deep_c2_gelu", "deep16", "deep8", "deep32", "deep16_8", "deep16x4", "whitened",
                                  "gated"])
def test_the_experiments_candidate_networks_keep_every_rule(name: str) -> None:
    # results/experiments.md compares these networks with the default: the comparison is only fair to
    # a student if each of them would be accepted by the assignment too.
    summary = json.loads(cli("summary", "--model", f"{CANDIDATES}:{name}", "--json").stdout)
    assert summary["passed"] and summary["parameters"] < 200_000, summary["rules"]


def test_the_default_networks_whitened_stem_is_set_from_the_training_images_and_never_trained(
        tiny_data: Path, tmp_path: Path) -> None:
    result = cli("train", "--epochs", "2", "--data-dir", tiny_data, "--out", tmp_path, *TRAIN_ARGS)  # no --model
    assert result.exit_code == 0, result.stderr
    images = torch.from_numpy(load_split(tiny_data, train=True).images).permute(0, 3, 1, 2)
    expected = whitening_filters(normalize(images), 48)
    saved = load_file(tmp_path / "last.safetensors")
    assert torch.equal(saved["raw.c1.0.0.weight"], expected)  # the trained copy: frozen through 2 epochs
    assert torch.equal(saved["model.c1.0.0.weight"], expected)  # the lookahead copy that is evaluated


def test_whitening_filters_decorrelate_the_patches_they_were_made_from() -> None:
    torch.manual_seed(0)
    mix = torch.tensor([[1.0, 0.8, 0.6], [0.0, 0.6, 0.5], [0.0, 0.0, 0.4]])  # correlated colour channels
    images = torch.einsum("dc,nchw->ndhw", mix, torch.randn(64, 3, 16, 16)).cumsum(3)  # and neighbours
    filters = whitening_filters(images, 48)
    assert filters.shape == (48, 3, 3, 3) and torch.equal(filters[24:], -filters[:24])
    responses = F.conv2d(images, filters[:24]).permute(0, 2, 3, 1).reshape(-1, 24).double()
    moments = responses.T @ responses / len(responses)
    assert torch.allclose(moments, torch.eye(24, dtype=torch.float64), atol=0.05)
