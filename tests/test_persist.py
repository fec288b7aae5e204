"""``surgeon.save`` / ``surgeon.load``: a slim model round-trips through one file, in a new process.

Every zoo model is slimmed at 0.5 here, saved, and rebuilt in ONE separate Python process (a
script looping over the zoo) from a fresh instance built with another seed; its output on the
same input must match the in-process slim model's. Mismatched plans, missing arguments,
non-slim models, bad paths and damaged files must fail with a SurgeonError that says why.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import surgeon
import surgeon.persist
from surgeon.errors import SurgeonError, SurgeonInputError
from surgeon.exporter import SurgeonExportError
from surgeon.keys import PLAN_KEY
from surgeon.models import ZOO, create
from surgeon.persist import FORMAT, SurgeonLoadError
from tests.helpers import assert_same, randomize_norms

SMALL = (1, 3, 64, 64)
FIXED_INPUT = {
    "lenet5",
    "vit_tiny",
    "unet_small",
    "digits_cnn",
}  # their default input is already small / fixed


def zoo_case(name: str) -> dict[str, Any]:
    """How ``name`` is built here and in the loading process: small inputs where allowed."""
    kwargs: dict[str, Any] = {"num_classes": 10} if name == "vgg16_bn" else {}
    return {"input_shape": None if name in FIXED_INPUT else list(SMALL), "kwargs": kwargs}


def build(name: str, seed: int) -> tuple[nn.Module, torch.Tensor]:
    case = zoo_case(name)
    shape = case["input_shape"]
    return create(name, seed=seed, input_shape=shape and tuple(shape), **case["kwargs"])


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


LOADER = """
import json, sys
from pathlib import Path

import torch

import surgeon
from surgeon.keys import PLAN_KEY
from surgeon.models import create

torch.set_num_threads(int(sys.argv[2]))
folder = Path(sys.argv[1])
cases = json.loads((folder / "cases.json").read_text())
for name, case in cases.items():
    shape = case["input_shape"]
    fresh, _ = create(name, seed=1, input_shape=shape and tuple(shape), **case["kwargs"])
    gm = surgeon.load(folder / f"{name}.surgeon", fresh)
    x = torch.load(folder / f"{name}.in.pt")
    with torch.no_grad():
        out = gm(x)
    torch.save(
        {
            "out": out,
            "params": sum(p.numel() for p in gm.parameters()),
            "plan": gm.meta[PLAN_KEY],
            "is_graph_module": isinstance(gm, torch.fx.GraphModule),
            "keys": list(gm.state_dict()),
        },
        folder / f"{name}.out.pt",
    )
"""


@pytest.fixture(scope="module")
def zoo_round_trip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Slim and save every zoo model here; load them all in one new process; collect both."""
    folder = tmp_path_factory.mktemp("zoo")
    expected: dict[str, dict[str, Any]] = {}
    for name in ZOO:
        model, x = build(name, seed=0)
        randomize_norms(model, seed=0)  # BN with real statistics: the weights must all travel
        gm = surgeon.slim(model, 0.5, x)
        with torch.no_grad():
            out = gm(x)
        surgeon.save(gm, folder / f"{name}.surgeon")
        torch.save(x, folder / f"{name}.in.pt")
        expected[name] = {
            "out": out,
            "params": n_params(gm),
            "original_params": n_params(model),
            "plan": json.loads(json.dumps(gm.meta[PLAN_KEY])),
            "is_graph_module": isinstance(gm, torch.fx.GraphModule),
            "keys": list(gm.state_dict()),
        }
        del model, gm
    (folder / "cases.json").write_text(json.dumps({name: zoo_case(name) for name in ZOO}))
    script = folder / "load_zoo.py"
    script.write_text(LOADER)
    result = subprocess.run(
        [sys.executable, str(script), str(folder), str(torch.get_num_threads())],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    assert result.returncode == 0, f"the loading process failed:\n{result.stderr[-4000:]}"
    loaded = {name: torch.load(folder / f"{name}.out.pt") for name in ZOO}
    return {name: {"want": expected[name], "got": loaded[name]} for name in ZOO}


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_round_trips_in_a_new_process(
    zoo_round_trip: dict[str, dict[str, Any]], name: str
) -> None:
    want, got = zoo_round_trip[name]["want"], zoo_round_trip[name]["got"]
    assert want["params"] < want["original_params"], "slim removed nothing: the test proves little"
    assert got["params"] == want["params"]
    assert got["plan"] == want["plan"]
    # the form is kept: the model's own class (every zoo model but LeNet-5) or the graph
    assert got["is_graph_module"] == want["is_graph_module"] == (name == "lenet5")
    assert got["keys"] == want["keys"]
    assert_same(got["out"], want["out"], tol=1e-6)


# --------------------------------------------------------------------------------------------
# One small slim model for the format and refusal tests.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def r18(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    model, x = create("resnet18", seed=0, input_shape=SMALL)
    gm = surgeon.slim(model, 0.5, x)
    path = tmp_path_factory.mktemp("r18") / "r18.surgeon"
    assert surgeon.save(gm, path) == path
    return {"gm": gm, "x": x, "path": path}


def test_file_is_a_zip_of_readable_plan_json_and_weights(r18: dict[str, Any]) -> None:
    with zipfile.ZipFile(r18["path"]) as zf:
        assert sorted(zf.namelist()) == ["plan.json", "weights.pt"]
        doc = json.loads(zf.read("plan.json").decode("utf-8"))
    assert doc["format"] == FORMAT and doc["version"] == 1
    assert doc["surgeon"] == surgeon.__version__ and doc["torch"] == torch.__version__
    assert doc["plan"] == json.loads(json.dumps(r18["gm"].meta[PLAN_KEY]))
    assert doc["plan"]["model"] == "ResNet"


def test_loaded_model_can_be_saved_again_byte_for_byte(r18: dict[str, Any], tmp_path: Path) -> None:
    fresh, _ = create("resnet18", seed=7)
    gm = surgeon.load(r18["path"], fresh)
    assert gm.meta[PLAN_KEY] == json.loads(json.dumps(r18["gm"].meta[PLAN_KEY]))
    torch.testing.assert_close(gm(r18["x"]), r18["gm"](r18["x"]), rtol=0, atol=0)
    again = surgeon.save(gm, tmp_path / "again.surgeon")
    assert again.read_bytes() == r18["path"].read_bytes()
    assert fresh.fc.in_features == 512, "load must not cut the model it was given"


def test_plan_of_another_architecture_is_refused(r18: dict[str, Any]) -> None:
    other, _ = create("resnet50", seed=0)
    with pytest.raises(SurgeonLoadError, match="does not fit this ResNet") as info:
        surgeon.load(r18["path"], other)
    assert "channel graph differs" in str(info.value)
    assert "1x3x64x64" in str(info.value)
    assert "fresh instance of the model it was made from" in str(info.value)


def test_plan_of_other_constructor_arguments_is_refused(r18: dict[str, Any]) -> None:
    other, _ = create("resnet18", seed=0, num_classes=10)
    with pytest.raises(
        SurgeonLoadError, match=r"fc\.weight: saved \[1000, \d+\], model \[10, \d+\]"
    ):
        surgeon.load(r18["path"], other)
    with pytest.raises(SurgeonLoadError, match="num_classes"):
        surgeon.load(r18["path"], other)


def test_load_without_a_model_says_the_architecture_is_needed(r18: dict[str, Any]) -> None:
    with pytest.raises(SurgeonLoadError, match="needs the original architecture") as info:
        surgeon.load(r18["path"])
    assert "ResNet" in str(info.value) and "no code" in str(info.value)


def test_load_onto_a_slim_model_is_refused(r18: dict[str, Any]) -> None:
    with pytest.raises(SurgeonLoadError, match="already a slim model"):
        surgeon.load(r18["path"], r18["gm"])
    with pytest.raises(SurgeonInputError, match="torch.nn.Module"):
        surgeon.load(r18["path"], "resnet18")  # type: ignore[arg-type]


def test_save_refuses_a_model_slim_did_not_make(tmp_path: Path) -> None:
    model, _ = create("lenet5")
    target = tmp_path / "plain.surgeon"
    with pytest.raises(SurgeonInputError, match="pass the module surgeon.slim returned"):
        surgeon.save(model, target)
    with pytest.raises(SurgeonInputError, match="surgeon.slim returned"):
        surgeon.save({"weight": torch.zeros(1)}, target)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_save_into_a_missing_folder_leaves_nothing(r18: dict[str, Any], tmp_path: Path) -> None:
    target = tmp_path / "missing" / "r18.surgeon"
    with pytest.raises(SurgeonExportError, match="does not exist"):
        surgeon.save(r18["gm"], target)
    assert list(tmp_path.iterdir()) == []


def test_failed_save_leaves_no_partial_file(
    r18: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "r18.surgeon"
    target.write_bytes(b"old")

    def broken_save(obj: Any, f: Any) -> None:
        f.write(b"partial weights")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(surgeon.persist.torch, "save", broken_save)
    with pytest.raises(SurgeonExportError, match="No space left on device"):
        surgeon.save(r18["gm"], target)
    assert [p.name for p in tmp_path.iterdir()] == ["r18.surgeon"]
    assert target.read_bytes() == b"old"


def _truncated(src: Path, dst: Path) -> None:
    dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2])


def _torch_checkpoint(src: Path, dst: Path) -> None:
    torch.save({"weight": torch.zeros(3)}, dst)


def _bad_json(src: Path, dst: Path) -> None:
    with zipfile.ZipFile(dst, "w") as zf:
        zf.writestr("plan.json", "{not json")
        zf.writestr("weights.pt", b"")


def _newer_version(src: Path, dst: Path) -> None:
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w") as new:
        doc = json.loads(old.read("plan.json"))
        doc["version"] = 99
        new.writestr("plan.json", json.dumps(doc))
        new.writestr("weights.pt", old.read("weights.pt"))


def _damaged_weights(src: Path, dst: Path) -> None:
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w") as new:
        new.writestr("plan.json", old.read("plan.json"))
        new.writestr("weights.pt", old.read("weights.pt")[:1000])


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (None, "no surgeon file at"),
        (lambda src, dst: dst.mkdir(), "is a folder"),
        (lambda src, dst: dst.write_bytes(os.urandom(256)), "not a zip archive"),
        (_truncated, "not a zip archive"),
        (_torch_checkpoint, "no plan.json"),
        (_bad_json, "plan.json is not valid JSON"),
        (_newer_version, "upgrade surgeon"),
        (_damaged_weights, "weights.pt cannot be read"),
    ],
    ids=["missing", "folder", "garbage", "truncated", "checkpoint", "json", "version", "weights"],
)
def test_missing_or_damaged_files_are_refused(
    r18: dict[str, Any], tmp_path: Path, make: Any, needle: str
) -> None:
    path = tmp_path / "bad.surgeon"
    if make is not None:
        make(r18["path"], path)
    fresh, _ = create("resnet18", seed=0)
    with pytest.raises(SurgeonLoadError, match=needle) as info:
        surgeon.load(path, fresh)
    assert str(path) in str(info.value)
    assert isinstance(info.value, SurgeonError)


# --------------------------------------------------------------------------------------------
# A bias PropagatePass created, and leaf modules.
# --------------------------------------------------------------------------------------------


def folding_net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 4, 1, bias=False),
    ).eval()


def test_bias_created_by_constant_folding_round_trips(tmp_path: Path) -> None:
    model = folding_net(seed=0)
    with torch.no_grad():
        model[0].weight[[1, 4]] = 0.0  # two dead filters: BN turns them into its (positive) shift
        model[1].bias.copy_(torch.linspace(0.5, 1.0, 6))
        model[1].running_mean.zero_()
    x = torch.randn(2, 3, 8, 8)
    gm = surgeon.slim(model, 0.0, x)
    assert gm.get_submodule("0").out_channels == 4
    assert gm.get_submodule("3").bias is not None, "precondition: slim folded a bias into conv 3"
    path = surgeon.save(gm, tmp_path / "fold.surgeon")

    fresh = folding_net(seed=1)
    assert fresh[3].bias is None
    loaded = surgeon.load(path, fresh)
    assert loaded.get_submodule("3").bias is not None
    assert isinstance(loaded.get_submodule("3").bias, nn.Parameter)
    torch.testing.assert_close(loaded(x), gm(x), rtol=0, atol=0)
    torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)


class Gate(nn.Module):
    """A module the tests keep opaque to torch.fx (a leaf)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv(x))


def gated_net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        Gate(8),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 4, 1),
    ).eval()


def test_leaf_modules_must_be_given_again(tmp_path: Path) -> None:
    model, x = gated_net(seed=0), torch.randn(1, 3, 16, 16)
    gm = surgeon.slim(model, 0.5, x, leaf_modules=[Gate])
    assert n_params(gm) < n_params(model)
    path = surgeon.save(gm, tmp_path / "gated.surgeon")
    with pytest.raises(SurgeonLoadError, match="leaf_modules") as info:
        surgeon.load(path, gated_net(seed=1))
    assert "Gate" in str(info.value)
    loaded = surgeon.load(path, gated_net(seed=1), leaf_modules=[Gate])
    torch.testing.assert_close(loaded(x), gm(x), rtol=0, atol=0)


@pytest.mark.parametrize("grouped", ["groups", (8,)])
def test_whole_group_pruning_round_trips(grouped: Any, tmp_path: Path) -> None:
    # the load rebuilds the channel graph: it must take whole groups where the slim did
    model, x = build("regnety_400mf", seed=0)
    randomize_norms(model, seed=0)
    gm = surgeon.slim(model, 0.5, x, grouped=grouped)
    assert gm.meta[PLAN_KEY]["grouped"] == (grouped if grouped == "groups" else list(grouped))
    grouped_convs = {
        n: m.in_channels // m.groups
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels
    }
    cut = dict(gm.named_modules())
    assert set(grouped_convs.values()) == {8}  # 48 / 6 groups ...: every group 8 wide
    assert all(cut[n].in_channels // cut[n].groups == 8 for n in grouped_convs)  # kept whole
    assert any(cut[n].groups < model.get_submodule(n).groups for n in grouped_convs)
    surgeon.save(gm, tmp_path / "m.surgeon")
    fresh, _ = build("regnety_400mf", seed=1)
    loaded = surgeon.load(tmp_path / "m.surgeon", fresh)
    assert n_params(loaded) == n_params(gm)
    with torch.no_grad():
        assert_same(loaded(x), gm(x))


def test_a_plan_without_whole_group_names_loads_by_width(tmp_path: Path) -> None:
    # plans written before the names were recorded chose whole groups by width alone
    model, x = build("regnety_400mf", seed=0)
    gm = surgeon.slim(model, 0.5, x, grouped=(8,))
    assert gm.meta[PLAN_KEY].pop("whole_groups")
    surgeon.save(gm, tmp_path / "m.surgeon")
    loaded = surgeon.load(tmp_path / "m.surgeon", build("regnety_400mf", seed=1)[0])
    assert n_params(loaded) == n_params(gm)
    with torch.no_grad():
        assert_same(loaded(x), gm(x))
