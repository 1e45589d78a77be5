"""Device profiles: built-ins, user files, and malformed files that name the bad field."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import pytest

from mixprune.devices.profiles import builtin_names, load_profile
from mixprune.devices.runners import get_runner, list_runners
from mixprune.errors import DeviceError

from tests.helpers import heavy_imports

from tests.devices.devices_helpers import write_profile

REPO = Path(__file__).resolve().parents[2]


def test_builtin_profiles_cover_the_promised_devices():
    names = builtin_names()
    assert {"host", "rpi4", "rpi5", "rpi-zero2", "x86-edge"} <= set(names)
    for name in names:
        p = load_profile(name)
        assert p.name == name  # the file name and the name field agree (bench/<name>.json)
        assert p.runs >= 1 and p.inter_op_threads >= 1
    pi = load_profile("rpi4")
    assert (pi.arch, pi.cores, pi.intra_op_threads, pi.runner.kind) == ("aarch64", 4, 4, "ssh")
    assert load_profile("rpi-zero2").memory_mb == 512
    assert load_profile("host").runner.kind == "local"


def test_runner_registry():
    assert {"local", "ssh", "emulated"} <= set(list_runners())
    assert get_runner("emulated").emulated and not get_runner("ssh").emulated
    with pytest.raises(DeviceError, match="unknown runner 'telnet'"):
        get_runner("telnet")


def test_a_user_file_works_anywhere_a_name_does(tmp_path, cli):
    path = write_profile(tmp_path / "mine.toml", benchmark='warmup = 3\nruns = 7\nshapes = { x = "2x3x16x16" }\n')
    p = load_profile(path)
    assert (p.name, p.runs, p.warmup, p.shapes) == ("testbox", 7, 3, {"x": [2, 3, 16, 16]})
    shown = cli("devices", "show", path)
    assert shown.exit_code == 0 and "testbox" in shown.stdout


@pytest.mark.parametrize("override, field", [
    ({"onnxruntime": 'intra_op_threads = "four"\n'}, "onnxruntime.intra_op_threads"),
    ({"onnxruntime": "intra_op_threads = -1\n"}, "onnxruntime.intra_op_threads"),
    ({"onnxruntime": "intra_op_threads = 1\nintra_threads = 2\n"}, "onnxruntime.intra_threads"),
    ({"onnxruntime": 'intra_op_threads = 1\ngraph_optimization_level = "max"\n'}, "onnxruntime.graph_optimization_level"),
    ({"onnxruntime": "allow_spinning = true\n"}, "onnxruntime.intra_op_threads"),  # required, missing
    ({"budget": 'memory_mb = "lots"\n'}, "budget.memory_mb"),
    ({"benchmark": "runs = 0\n"}, "benchmark.runs"),
    ({"benchmark": 'shapes = { x = "1xbig" }\n'}, "benchmark.shapes"),
    ({"runner": 'kind = "telnet"\n'}, "runner.kind"),
    ({"runner": 'kind = "ssh"\nport = 22\n'}, "runner.host"),
    ({"runner": 'kind = "ssh"\nhost = "pi"\nport = "22"\n'}, "runner.port"),
    ({"runner": 'kind = "local"\nhost = "pi"\n'}, "runner.host"),
    ({"top": 'name = "a/b"\narch = "x86_64"\ncores = 1\n'}, "name"),
    ({"top": 'name = "x"\narch = "sparc"\ncores = 1\n'}, "arch"),
    ({"top": 'name = "x"\narch = "x86_64"\ncores = 1\nchannel_multiple = -8\n'}, "channel_multiple"),
])
def test_malformed_profile_names_the_bad_field(tmp_path, cli, override, field):
    path = write_profile(tmp_path / "bad.toml", **override)
    with pytest.raises(DeviceError) as err:
        load_profile(path)
    assert f"'{field}'" in str(err.value) and str(path) in str(err.value)
    result = cli("devices", "show", path)
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and f"'{field}'" in result.stderr


def test_invalid_toml_and_unknown_devices_are_one_line_errors(tmp_path, cli):
    broken = tmp_path / "broken.toml"
    broken.write_text('name = "x"\ncores = \n')
    for ref, expected in ((broken, "not valid TOML"), ("rpi9", "unknown device 'rpi9'"),
                          (tmp_path / "absent.toml", "does not exist")):
        result = cli("devices", "show", ref)
        assert result.exit_code == 2, result.output
        assert expected in result.stderr and result.stderr.strip().count("\n") == 0
    assert "rpi4" in cli("devices", "show", "rpi9").stderr  # the message lists what exists


def test_devices_list_and_show(cli):
    listed = cli("devices", "list")
    assert listed.exit_code == 0
    for name in builtin_names():
        assert any(line.startswith(name + " ") for line in listed.stdout.splitlines())
    shown = cli("devices", "show", "rpi4")
    assert shown.exit_code == 0
    assert tomllib.loads(shown.stdout)["runner"]["kind"] == "ssh"  # show prints a reusable TOML file


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_architecture_rules():
    """devices/ and benchmarks/ never import torch or the pruning / exporter stages, and the
    agent imports only the standard library, numpy and onnxruntime."""
    for folder in ("devices", "benchmarks"):
        for path in (REPO / folder).rglob("*.py"):
            for name in _imports(path):
                top = name.split(".")[0]
                assert top not in ("torch", "timm", "torchvision"), (path, name)
                assert not name.startswith(("mixprune.pruning", "mixprune.exporter")), (path, name)
    agent_imports = {n.split(".")[0] for n in _imports(REPO / "devices" / "agent.py")}
    assert agent_imports - set(sys.stdlib_module_names) == {"numpy", "onnxruntime"}


@pytest.mark.parametrize("args", [["devices", "list"], ["devices", "show", "host"], ["bench", "--help"]])
def test_device_commands_do_not_import_torch(args):
    assert heavy_imports(("torch", "timm"), command=args) == []


def test_run_rounds_channels_to_what_every_device_profile_asks(tmp_path):
    from mixprune.config import RunConfig
    from mixprune.pipeline import with_device_rounding

    def profile(name, multiple):
        top = f'name = "{name}"\narch = "aarch64"\ncores = 4\nchannel_multiple = {multiple}\n'
        return load_profile(write_profile(tmp_path / f"{name}.toml", top=top))

    neon, wide, host = profile("neon", 16), profile("wide", 24), load_profile("host")
    assert host.channel_multiple == 0  # the built-in profiles leave mixprune's default
    assert with_device_rounding(RunConfig(), [host]).round_to is None
    assert with_device_rounding(RunConfig(), [host, neon, wide]).round_to == 48  # a multiple of 16 and of 24
    assert with_device_rounding(RunConfig(round_to=4), [neon]).round_to == 4  # --round-to wins
