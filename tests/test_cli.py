"""The ``surgeon`` command line, run as a subprocess (``python -m surgeon.cli``)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch

import surgeon
from surgeon.exporter import export, max_opset
from surgeon.models import DEFAULT_MODEL, create

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()

FACTORY_FILE = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 3)

    def forward(self, x):
        return self.conv2(torch.relu(self.bn1(self.conv1(x)))).mean(dim=(2, 3))


class Lies(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x).mean(dim=(2, 3))
        return y + 1.0 if torch.onnx.is_in_onnx_export() else y


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class Blocky(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.bn1 = nn.BatchNorm2d(8)
        self.block = Block()
        self.conv2 = nn.Conv2d(8, 4, 3)

    def forward(self, x):
        return self.conv2(self.block(torch.relu(self.bn1(self.conv1(x))))).mean(dim=(2, 3))


def make():
    return Net()


def blocky():
    return Blocky()


def lies():
    return Lies()


def broken():
    raise RuntimeError("no weights today")
"""


def run(*args: str, cwd: Path, columns: int = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns)}
    return subprocess.run(
        [sys.executable, "-m", "surgeon.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_user_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "models.py").write_text(FACTORY_FILE)
    return tmp_path


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_bare_export_writes_onnx_and_report(tmp_path: Path) -> None:
    result = run("export", "--report", "report.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = tmp_path / f"{DEFAULT_MODEL}_slim.onnx"
    # the original's ONNX (for the latency comparison) went to a temporary folder
    assert files(tmp_path) == sorted([out.name, "report.json"])
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"

    report = json.loads((tmp_path / "report.json").read_text())
    original, _ = create(DEFAULT_MODEL)
    assert report["model"] == DEFAULT_MODEL
    assert report["settings"]["ratio"] == 0.5 and report["settings"]["scope"] == "local"
    assert report["original"]["params"] == sum(p.numel() for p in original.parameters())
    assert report["slim"]["params"] < report["original"]["params"]
    assert report["compression_ratio"] == pytest.approx(
        report["original"]["params"] / report["slim"]["params"]
    )
    assert report["theoretical_speedup"] == pytest.approx(
        report["original"]["macs"] / report["slim"]["macs"]
    )
    assert report["slim"]["onnx_bytes"] == out.stat().st_size
    cpu_orig = report["original"]["latency_median_ms"]["cpu"]
    cpu_slim = report["slim"]["latency_median_ms"]["cpu"]
    assert cpu_orig > 0 and cpu_slim > 0
    assert report["measured_speedup"]["cpu"] == pytest.approx(cpu_orig / cpu_slim)
    assert report["measured_over_theoretical"]["cpu"] == pytest.approx(
        report["measured_speedup"]["cpu"] / report["theoretical_speedup"]
    )
    assert "compression" in result.stdout and "theoretical" in result.stdout
    # the form slim gave back: the zoo's ResNet as its own class
    assert report["settings"]["form"].startswith("ResNet (the model's own class")
    assert "form: ResNet (the model's own class" in result.stdout


def test_export_factory_file_with_options(workdir: Path) -> None:
    result = run(
        "export",
        "models.py:make",
        "--input-shape",
        "1,3,16,16",
        "--ratio",
        "0.25",
        "--round-to",
        "2",
        "--scope",
        "global",
        "-o",
        "net.onnx",
        "--no-bench",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    assert files(workdir) == ["models.py", "net.onnx"]
    kernels = sorted(
        tuple(i.dims)
        for i in onnx.load(str(workdir / "net.onnx")).graph.initializer
        if len(i.dims) == 4
    )
    # conv1: 8 -> 6 output channels (ratio 0.25, a multiple of 2); conv2 reads 6, keeps its 4
    assert kernels == [(4, 6, 3, 3), (6, 3, 3, 3)]


def test_export_module_factory(workdir: Path) -> None:
    result = run("export", "models:make", "--input-shape", "1,3,16,16", "--no-bench", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "make_slim.onnx" in files(workdir)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["export", "nofile.py:f"], ["'nofile.py'", "does not exist"]),
        (["export", "models.py:nope"], ["'nope' is not defined", "make"]),
        (["export", "models.py:make"], ["--input-shape"]),
        (["export", "models.py:broken", "--input-shape", "1,3,8,8"], ["no weights today"]),
        (["export", "no_such_pkg.mod:f"], ["cannot import module 'no_such_pkg.mod'"]),
        (["export", "resnet9"], ["unknown model 'resnet9'", "resnet18"]),
        (["export", "--ratio", "1.5"], ["--ratio: ratio=1.5", "0 <= ratio < 1"]),
        (["export", "--ratio", "-0.1"], ["--ratio: ratio=-0.1"]),
        (["export", "--input-shape", "1,x,3"], ["--input-shape '1,x,3'"]),
        (["export", "-o", "missing/out.onnx"], ["does not exist"]),
        (["export", "-o", "models.py/out.onnx"], ["not a folder"]),
        (["export", "lenet5", "--report", "missing/r.json"], ["report file", "does not exist"]),
        (["export", "--scope", "everywhere"], ["--scope"]),
        (["export", "--round-to", "0"], ["--round-to: round_to=0"]),
        (["export", "--importance", "taylor"], ["--importance taylor", "data", "bn_scale"]),
        (
            ["export", "--importance", "activation"],
            ["--importance activation", "data=...) from Python"],
        ),
        (["export", "--importance", "l3"], ["--importance: importance='l3'", "bn_scale"]),
        (["export", "models.py:lies", "--input-shape", "1,3,8,8"], ["disagrees", "tolerance"]),
        (["inspect"], ["Missing argument"]),
        (["bench", "nothere.onnx"], ["'nothere.onnx' does not exist"]),
        (["export", "--opset", "99"], ["--opset 99", f"7 to {max_opset()}"]),
        (["export", "--opset", "6"], ["--opset 6", f"7 to {max_opset()}"]),
        (["export", "lenet5", "--weights", "no.pt"], ["--weights 'no.pt' does not exist"]),
        (["export", "lenet5", "--weights", "models.py"], ["'models.py' cannot be read"]),
        (["export", "-o", "a.onnx", "--save", "a.onnx"], ["--output and --save", "same file"]),
        (
            ["export", "models.py:make", "--input-shape", "1,3,8,8", "--ignore", "conv9"],
            ["--ignore: ignore names 'conv9', which is not a submodule of the Net", "'conv1'"],
        ),
        (
            ["export", "models.py:blocky", "--input-shape", "1,3,8,8", "--leaf-module", "blok"],
            [
                "--leaf-module: leaf_modules names 'blok', which is neither a submodule",
                "'block'",
                "Block",
            ],
        ),
        (["inspect", "lenet5", "--ratio", "1.5"], ["--ratio: ratio=1.5"]),
        (["export", "--ratio", "0.3", "--speedup", "2"], ["--ratio and --speedup", "give one"]),
        (["export", "lenet5", "--plots", "models.py"], ["--plots", "is a file"]),
        (["export", "lenet5", "--html", "missing/r.html"], ["HTML report", "does not exist"]),
        (["export", "--macs", "3", "--params", "2"], ["--macs, --params: give one target"]),
        (["export", "--speedup", "0.5"], ["--speedup 0.5: Target(speedup=0.5)", "factor > 1"]),
        (["export", "--latency-ms", "-1"], ["--latency-ms -1", "milliseconds"]),
        (
            ["inspect", "lenet5", "--leaf-module", "nope"],
            ["--leaf-module: leaf_modules names 'nope'", "'conv1'"],
        ),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(workdir: Path, args, needles) -> None:
    result = run(*args, cwd=workdir)
    assert_user_error(result, *needles)
    assert files(workdir) == ["models.py"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_read_only_output_folder(workdir: Path) -> None:
    locked = workdir / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = run("export", "lenet5", "-o", "locked/out.onnx", cwd=workdir)
        assert_user_error(result, "not writable")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


@pytest.mark.skipif(HAS_CUDA, reason="onnxruntime has CUDA here")
def test_device_cuda_without_cuda(workdir: Path) -> None:
    result = run("export", "lenet5", "--device", "cuda", cwd=workdir)
    assert_user_error(result, "--device cuda", "CUDAExecutionProvider")
    assert files(workdir) == ["models.py"]


def test_unexpected_error_exit_1_with_debug_hint(tmp_path: Path) -> None:
    code = (
        "import surgeon.cli as cli, surgeon.cli.loading as loading\n"
        "def boom(*args, **kwargs):\n"
        "    raise RuntimeError('kaboom')\n"
        "loading.load_model = boom\n"
        "cli.main(['inspect', 'lenet5'{debug}])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code.format(debug="")], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: unexpected RuntimeError: kaboom (rerun with --debug for the traceback)"
    ]
    result = subprocess.run(
        [sys.executable, "-c", code.format(debug=", '--debug'")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "kaboom" in result.stderr


def test_export_to_a_target(workdir: Path) -> None:
    result = run(
        "export", "--input-shape", "1,3,64,64", "--macs", "2", "--no-bench", "--report", "r.json",
        cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "target: macs 2x; achieved 2" in result.stdout
    settings = json.loads((workdir / "r.json").read_text())["settings"]
    target = settings["target"]
    assert (target["kind"], target["value"]) == ("macs", 2.0)
    assert abs(target["achieved"] / 2.0 - 1) <= 0.03 and target["rounds"]
    assert settings["ratio"] == 0.0


def test_export_writes_the_page_and_its_figures(workdir: Path) -> None:
    result = run(
        "export", "lenet5", "--runs", "3", "--warmup", "1", "--html", "r.html", "--plots", "png",
        "--report", "r.json", cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    page = (workdir / "r.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "Time per layer" in page
    assert sorted(p.name for p in (workdir / "png").iterdir()) == [
        "latency.png", "layers.png", "widths.png"
    ]  # fmt: skip
    layers = json.loads((workdir / "r.json").read_text())["layers"]
    convs = [r for r in layers if r["op"] == "Conv"]  # lenet5's two convs, in both files
    assert len(convs) == 2 and all(None not in r["ms"] + r["macs"] for r in convs)


def test_inspect_prints_groups(workdir: Path) -> None:
    result = run("inspect", "lenet5", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "prunable" in result.stdout and "conv1.weight" in result.stdout
    result = run("inspect", "models.py:make", "--input-shape", "1,3,16,16", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "bn1" in result.stdout


def test_bench_one_and_two_files(tmp_path: Path) -> None:
    model, x = create("lenet5")
    export(model, x, tmp_path / "a.onnx")
    export(model, x, tmp_path / "b.onnx")
    result = run("bench", "a.onnx", "--runs", "5", "--warmup", "1", "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "median ms" in result.stdout and "a.onnx" in result.stdout
    row = next(line for line in result.stdout.splitlines() if "a.onnx" in line)
    median, p90 = (float(v) for v in re.findall(r"\d+\.\d{3}", row)[:2])
    assert 0 < median <= p90
    result = run("bench", "a.onnx", "b.onnx", "--runs", "5", "--warmup", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if "b.onnx" in line)
    assert re.search(r"\d+\.\d\dx", row)  # the speedup of b over a
    if not HAS_CUDA:
        assert "cuda: not measured" in result.stdout
    assert files(tmp_path) == ["a.onnx", "b.onnx"]


def test_console_script_is_installed() -> None:
    script = shutil.which("surgeon", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the package is not installed in this environment (pip install -e .)")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "export" in result.stdout and "inspect" in result.stdout and "bench" in result.stdout


def test_unwritable_output_folder(tmp_path: Path) -> None:
    """As root no folder is read-only, so the OS's answer is simulated with os.access."""
    code = (
        "import os, surgeon.cli as cli\n"
        "os.access = lambda *args, **kwargs: False\n"
        "cli.main(['export', 'lenet5', '-o', 'out.onnx'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert_user_error(result, "is not writable", str(tmp_path))
    assert files(tmp_path) == []


def test_export_with_bn_scale_and_no_compensation(workdir: Path) -> None:
    result = run(
        "export", "models.py:make", "--input-shape", "1,3,16,16", "--importance", "bn_scale",
        "--no-compensate", "--no-bench", "-o", "n.onnx", "--report", "r.json", cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    settings = json.loads((workdir / "r.json").read_text())["settings"]
    assert (settings["importance"], settings["compensate"]) == ("bn_scale", False)


def load_factory_file(folder: Path):
    spec = importlib.util.spec_from_file_location("_test_cli_models", folder / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kernels(path: Path) -> list[tuple[int, ...]]:
    return sorted(tuple(i.dims) for i in onnx.load(str(path)).graph.initializer if len(i.dims) == 4)


def test_export_json_save_ignore_and_the_model_as_typed(workdir: Path) -> None:
    """--json: stdout is the report alone (the model named as typed); --save writes a
    .surgeon file beside the ONNX file; --ignore keeps conv1's channels."""
    result = run(
        "export", "models.py:make", "--input-shape", "1,3,16,16", "--no-bench", "--json",
        "-o", "n.onnx", "--save", "n.surgeon", "--ignore", "conv1", "--round-to", "1",
        cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"] == "models.py:make"
    assert report["settings"]["ignore"] == ["conv1"]
    assert report["settings"]["save"] == str(workdir / "n.surgeon")
    assert "wrote" in result.stderr and "wrote" not in result.stdout
    assert files(workdir) == ["models.py", "n.onnx", "n.surgeon"]
    assert kernels(workdir / "n.onnx") == [(4, 8, 3, 3), (8, 3, 3, 3)]  # conv1 kept its 8
    loaded = surgeon.load(workdir / "n.surgeon", model=load_factory_file(workdir).make())
    assert loaded.conv1.out_channels == 8


def test_round_to_auto_is_the_default_and_recorded(workdir: Path) -> None:
    """The channel multiple is measured on the device (cached), used and recorded."""
    from surgeon.hardware import CANDIDATES

    result = run(
        "export", "models.py:make", "--input-shape", "1,3,16,16", "--no-bench", "--json",
        "-o", "n.onnx", "--ratio", "0.3", cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    settings = json.loads(result.stdout)["settings"]
    assert settings["round_to_auto"] is True and settings["round_to"] in CANDIDATES
    m = settings["round_to"]
    conv1 = next(k for k in kernels(workdir / "n.onnx") if k[1] == 3)
    assert conv1[0] == min(8, math.ceil(6 / m) * m)  # 8 - 30% = 6 channels, rounded up to m
    result = run(
        "export", "models.py:make", "--input-shape", "1,3,16,16", "--no-bench", "--json",
        "-o", "m.onnx", "--round-to", "3", cwd=workdir,
    )  # fmt: skip
    settings = json.loads(result.stdout)["settings"]
    assert settings["round_to_auto"] is False and settings["round_to"] == 3
    result = run("export", "models.py:make", "--round-to", "fast", cwd=workdir)
    assert_user_error(result, "--round-to: round_to='fast'", "whole number >= 1", "or 'auto'")


GROUPED_FILE = """
from torch import nn


def make():
    return nn.Sequential(
        nn.Conv2d(3, 32, 1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(32, 4, 1),
    )
"""


def test_grouped_flag_is_used_and_recorded(tmp_path: Path) -> None:
    (tmp_path / "g.py").write_text(GROUPED_FILE)
    common = ("export", "g.py:make", "--input-shape", "1,3,8,8", "--no-bench", "--json")
    for flags, grouped, kernel in (
        (["--grouped", "groups", "--round-to", "1"], "groups", (16, 16, 3, 3)),  # 1 group
        (["--round-to", "1"], "offsets", (16, 8, 3, 3)),  # 2 groups of 8
    ):
        result = run(*common, "-o", "g.onnx", *flags, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        settings = json.loads(result.stdout)["settings"]
        assert settings["grouped"] == grouped
        assert kernel in kernels(tmp_path / "g.onnx")
    result = run(*common, "-o", "a.onnx", cwd=tmp_path)  # round_to auto: grouped measured
    assert isinstance(json.loads(result.stdout)["settings"]["grouped"], list)
    result = run(*common, "--grouped", "some", cwd=tmp_path)
    assert result.returncode == 2 and "--grouped" in result.stderr


def test_export_weights_from_a_checkpoint(workdir: Path) -> None:
    net = load_factory_file(workdir).make()
    torch.save({"epoch": 3, "state_dict": net.state_dict()}, workdir / "ckpt.pt")
    result = run(
        "export", "models.py:make", "--input-shape", "1,3,16,16", "--ratio", "0", "--no-bench",
        "--weights", "ckpt.pt", "-o", "n.onnx", "--save", "n.surgeon", cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    loaded = surgeon.load(workdir / "n.surgeon", model=load_factory_file(workdir).make())
    state = loaded.state_dict()
    for key, value in net.state_dict().items():  # ratio 0: the slim model is the checkpoint's
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)


def test_weights_that_do_not_fit_are_refused(workdir: Path) -> None:
    state = load_factory_file(workdir).make().state_dict()
    state.pop("conv2.bias")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, workdir / "bad.pt")
    result = run(
        "export", "models.py:make", "--input-shape", "1,3,8,8", "--weights", "bad.pt", cwd=workdir
    )
    assert_user_error(
        result, "--weights 'bad.pt'", "missing keys conv2.bias", "unexpected keys extra.weight"
    )
    state = load_factory_file(workdir).make().state_dict()
    state["conv1.weight"] = torch.zeros(5, 3, 3, 3)
    torch.save({"model": state}, workdir / "shape.pt")
    result = run(
        "inspect", "models.py:make", "--input-shape", "1,3,8,8", "--weights", "shape.pt",
        cwd=workdir,
    )  # fmt: skip
    assert_user_error(result, "'shape.pt'", "conv1.weight (5x3x3x3 in the file, 8x3x3x3")
    assert files(workdir) == ["bad.pt", "models.py", "shape.pt"]


def test_export_leaf_module(workdir: Path) -> None:
    """fx does not trace into the leaf: the groups around it keep their channels."""
    result = run(
        "export", "models.py:blocky", "--input-shape", "1,3,16,16", "--no-bench",
        "--leaf-module", "block", "-o", "b.onnx", "--json", "--round-to", "1", cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["settings"]["leaf_modules"] == ["block"]
    assert kernels(workdir / "b.onnx") == [(4, 8, 3, 3), (8, 3, 3, 3), (8, 8, 3, 3)]


def test_inspect_ratio_shows_channels_before_and_after(workdir: Path) -> None:
    result = run("inspect", "lenet5", "--ratio", "0.5", "--round-to", "1", cwd=workdir)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "→" in line]
    assert len(rows) == 6  # the groups with parameters
    for before_after, modules in [
        ("6 → 3", "conv1, conv2"),
        ("16 → 8", "conv2, fc1"),
        ("120 → 60", "fc1, fc2"),
        ("84 → 42", "fc2, fc3"),
        ("10 → 10", "fc3"),
    ]:
        assert any(before_after in r and modules in r for r in rows), result.stdout
    assert "more groups" not in result.stdout
    result = run(
        "inspect", "lenet5", "--ratio", "0.5", "--round-to", "1", "--max-rows", "2", cwd=workdir
    )
    assert result.returncode == 0, result.stderr
    assert len([line for line in result.stdout.splitlines() if "→" in line]) == 2
    assert "… and 4 more groups" in result.stdout
    result = run(
        "inspect", "models.py:blocky", "--input-shape", "1,3,16,16", "--ratio", "0.5",
        "--leaf-module", "Block", cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "blocked: no rule for Block" in result.stdout and "8 → 8" in result.stdout
    assert files(workdir) == ["models.py"]


@pytest.mark.skipif(HAS_CUDA, reason="onnxruntime has CUDA here")
def test_bench_device_cuda_without_cuda(tmp_path: Path) -> None:
    (tmp_path / "a.onnx").write_bytes(b"not read: the flag is checked first")
    result = run("bench", "a.onnx", "--device", "cuda", cwd=tmp_path)
    assert_user_error(result, "--device cuda", "CUDAExecutionProvider")


@pytest.mark.parametrize(
    ("patch", "args"),
    [
        # before anything is written: in the export of the slim model
        ("import surgeon.exporter as m\nm.export = boom", []),
        # after the ONNX file and the report were written
        ("import surgeon\nsurgeon.save = boom", ["--report", "r.json", "--save", "n.surgeon"]),
    ],
)
def test_ctrl_c_is_one_line_exit_130_and_writes_nothing(tmp_path: Path, patch, args) -> None:
    code = (
        "import surgeon.cli as cli\n"
        "def boom(*args, **kwargs):\n"
        "    raise KeyboardInterrupt\n"
        f"{patch}\n"
        f"cli.main(['export', 'lenet5', '--no-bench', '-o', 'out.onnx', *{args!r}])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert result.returncode == 130, result.stderr
    assert result.stderr.splitlines() == ["interrupted; nothing was written"]
    assert files(tmp_path) == []


@pytest.mark.parametrize("command", [[], ["export"], ["inspect"], ["bench"]])
def test_help_fits_80_columns(tmp_path: Path, command) -> None:
    result = run(*command, "--help", cwd=tmp_path, columns=80)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, result.stdout
    for line in lines:
        assert "…" not in line, line  # nothing cut short
        assert not re.search(r"\w-$", line), line  # no word broken at its hyphen
        assert not re.search(r"\w\.\.\.$", line), line  # no command help cut short
    if command == ["export"]:
        for flag in ("--ignore", "--leaf-module", "--weights", "--save", "--json", "--version"):
            assert flag in result.stdout


def test_version(tmp_path: Path) -> None:
    for args in (["--version"], ["export", "--version"]):
        result = run(*args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"surgeon {surgeon.__version__}\n"
    assert files(tmp_path) == []
