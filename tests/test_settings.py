"""Every bad setting (run config TOML, flags, rule tables, device profiles) is refused up
front: one line naming the key and what is allowed, exit code 2, nothing written."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import re
from pathlib import Path

import click
import pytest

from mixprune.cli import main
from mixprune.config import FIELDS, MAX_SHIFTED_RATIO, QUICK_DEFAULTS, RUN_DEFAULTS, RunConfig, flag_label
from mixprune.errors import ConfigError
from mixprune.settings import Field, check_value

from tests.helpers import cli, heavy_imports

REPO = Path(__file__).resolve().parents[1]
VALID_PROFILE = ('name = "box"\narch = "x86_64"\ncores = 1\n\n[onnxruntime]\nintra_op_threads = 1\n\n'
                 '[benchmark]\nwarmup = 1\nruns = 5\n\n[runner]\nkind = "local"\n')


def assert_one_line_refusal(result, *phrases):
    """Exit code 2, no traceback, exactly one line (on stderr) starting with Error:."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert result.stdout == "", result.stdout
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


# --- the run configuration (--config) ---------------------------------------------------
# (TOML text, what the one line must say): the cases of the issue first
BAD_CONFIGS = [
    ('targets = ["a"]', "targets must be a non-empty list of numbers, each in [0, 1), got ['a']"),
    ("targets = 0.7", "targets must be a non-empty list of numbers, each in [0, 1), got 0.7"),
    ("signals = 3", "signals must be a non-empty list of strings, each one of magnitude, gradient, product, got 3"),
    ('sparsity = "0.9"', "sparsity must be a number in [0, 0.98]"),
    ("sparsity = 0.99", "sparsity must be in [0, 0.98] (every layer is capped at 98%), got 0.99"),
    ("sparsity = 0.981", "sparsity must be in [0, 0.98]"),
    ("sparsity = -0.1", "sparsity must be in [0, 0.98]"),
    ("targets = []", "targets must be a non-empty list"),
    ("targets = [0.7, 1.0]", "targets values must be in [0, 1), got 1.0"),
    ("targets = [0.7, true]", "targets must be a non-empty list of numbers"),
    ('targets = "0.7,abc"', "targets must be a non-empty list of numbers"),
    ("targets = {a = 1}", "targets must be a non-empty list of numbers"),
    ('signals = ["magnitude", "vibes"]', "signals values must be one of magnitude, gradient, product, got 'vibes'"),
    ('signals = ["magnitude", 3]', "signals must be a non-empty list of strings"),
    ("signals = []", "signals must be a non-empty list of strings"),
    ('baselines = "mag,nope"', "baselines values must be one of mag, snip, grasp, uniform, got 'nope'"),
    ("baselines = 1", "baselines must be a list of strings"),
    ('img_size = "32"', "img_size must be an integer >= 8, got '32'"),
    ("img_size = true", "img_size must be an integer >= 8, got true"),
    ("img_size = 32.0", "img_size must be an integer >= 8, got 32.0"),
    ("img_size = 4", "img_size must be >= 8, got 4"),
    ("img_size = [32]", "img_size must be an integer >= 8, got [32]"),
    ("seed = 1.5", "seed must be an integer >= 0, got 1.5"),
    ("seed = -1", "seed must be >= 0, got -1"),
    ("batch_size = 0", "batch_size must be >= 1, got 0"),
    ('batch-size = "64"', "batch-size must be an integer >= 1, got '64'"),
    ("batch-size = 1\nbatch_size = 2", "batch-size and batch_size are the same key"),
    ("train_epochs = -1", "train_epochs must be >= 0"),
    ('train-epochs = "15"', "train-epochs must be an integer >= 0"),
    ("train_lr = 0", "train_lr must be > 0, got 0"),
    ('train_lr = "1e-3"', "train_lr must be a number > 0, got '1e-3'"),
    ("calib_fraction = 0", "calib_fraction must be in (0, 1], got 0"),
    ("calib_fraction = [0.1]", "calib_fraction must be a number in (0, 1], got [0.1]"),
    ("finetune_lr = -1e-4", "finetune_lr must be > 0"),
    ("finetune-patience = -1", "finetune-patience must be >= 0, got -1"),
    ("finetune_top = 1.5", "finetune_top must be an integer >= 0"),
    ("recal_samples = 0", "recal_samples must be >= 1"),
    ('pretrained = "yes"', "pretrained must be true or false, got 'yes'"),
    ("recalibrate = 1", "recalibrate must be true or false, got 1"),
    ("quick = 1", "quick must be true or false, got 1"),
    ("model = 3", "model must be a string, got 3"),
    ("data = []", "data must be a string, got []"),
    ("checkpoint = 5", "checkpoint must be a string, got 5"),
    ("rules = true", "rules must be a string, got true"),
    ("out = 5", "out must be a string, got 5"),
    ("model_args = 3", "model_args must be a table"),
    ('model_args = "patch_size=4"', "model_args must be a table"),
    ("devices = 3", "devices must be a non-empty list of strings"),
    ("devices = []", "devices must be a non-empty list of strings"),
    ("max_drop = -1", "max_drop must be >= 0 (accuracy points), got -1"),
    ('max-drop = "1"', "max-drop must be a number >= 0"),
    ("max_drop = nan", "max_drop must be a number >= 0 (accuracy points), got nan"),
    ("max_drop = inf", "max_drop must be a number >= 0"),
    ('objective = "speed"', "objective must be one of latency, size, memory, got 'speed'"),
    ("objective = 5", "objective must be one of latency, size, memory, got 5"),
    ('storage = "zip"', "storage must be one of dense, sparse, got 'zip'"),
    ("export_top = 0", "export_top must be >= 1"),
    ("export_top = true", "export_top must be an integer >= 1, got true"),
    ("bench_runs = 0", "bench_runs must be >= 1"),
    ("bench-warmup = -1", "bench-warmup must be >= 0"),
    ('bench_warmup = "2"', "bench_warmup must be an integer >= 0"),
    ('mode = "channels"', "mode must be one of unstructured, structured, both, got 'channels'"),
    ("macs-reduction = 1.0", "macs-reduction must be in (0, 1)"),
    ("round-to = 0", "round-to must be >= 1"),
    ('executor = "dask"', "executor must be one of local, ray"),
    ("ray-cpus-per-task = 0", "ray-cpus-per-task must be >= 1"),
    ("batchsize = 64", "unknown key(s) batchsize (did you mean batch_size?)"),
    ('[run]\nmodel = "resnet18"', "unknown key(s) run"),
    ("targets = [0.7,", "is not valid TOML"),
]


@pytest.mark.parametrize("command", ["run", "prune"])
@pytest.mark.parametrize("text, message", BAD_CONFIGS, ids=[t.split("\n")[0] for t, _ in BAD_CONFIGS])
def test_bad_config_file_is_one_line_and_nothing_is_written(tmp_path, command, text, message):
    config = tmp_path / "bad.toml"
    config.write_text(text + "\n")
    out = tmp_path / "x"
    result = cli(command, "--config", config, "--out", out)
    assert_one_line_refusal(result, f"config file {config}", message)
    assert not out.exists()


def _wrong_values(field: Field) -> list:
    """Values of the wrong type for ``field``: a string for a number, a number for a list, ..."""
    kind = field.kind
    return {
        "int": ["7", 1.5, True, [1], {"a": 1}],
        "number": ["0.5", True, [0.5], {"a": 1}],
        "bool": [1, "yes", [True]],
        "str": [3, 2.5, True, ["a"], {"a": 1}],
        "names": [3, True, [1], [True], {"a": "b"}],
        "numbers": [0.7, True, ["a"], [True], {"a": 1}],
        "table": [3, "a=1", [1], True],
    }[kind]


WRONG_TYPES = [(name, value) for name, field in FIELDS.items() for value in _wrong_values(field)]


@pytest.mark.parametrize("name, value", WRONG_TYPES, ids=[f"{n}={toml_value(v)}" for n, v in WRONG_TYPES])
def test_every_field_refuses_a_wrong_type_in_one_line(tmp_path, name, value):
    config = tmp_path / "bad.toml"
    config.write_text(f"{name} = {toml_value(value)}\n")
    out = tmp_path / "x"
    result = cli("run", "--config", config, "--out", out)
    assert_one_line_refusal(result, f"config file {config}: {name} must be {FIELDS[name].allowed()}, got ")
    assert not out.exists()


def test_the_config_table_covers_every_field_and_accepts_good_values(tmp_path):
    assert set(FIELDS) == {f for f in RunConfig.field_names()}
    config = tmp_path / "good.toml"
    config.write_text('targets = "0.5, 0.6"\nsignals = "magnitude"\ndevices = ["host"]\nmax-drop = 2\n'
                      'sparsity = 0.9\nmodel_args = {drop_rate = 0.1}\nbench_warmup = 0\n')
    built = RunConfig.build(str(config))
    assert (built.targets, built.signals, built.devices, built.max_drop) == ((0.5, 0.6), ("magnitude",), ("host",), 2)
    assert built.model_args == {"drop_rate": 0.1} and built.sparsity == 0.9
    assert RunConfig(targets=[0.7]).targets == (0.7,)  # lists become tuples, from Python callers too


# --- flags ------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["run", "prune"])
@pytest.mark.parametrize("args, message", [
    (["--sparsity", "0.99"], "--sparsity must be in [0, 0.98] (every layer is capped at 98%), got 0.99"),
    (["--sparsity", str(MAX_SHIFTED_RATIO + 0.001)], "--sparsity must be in [0, 0.98]"),
    (["--signals", "magnitude,vibes"], "--signals values must be one of magnitude, gradient, product, got 'vibes'"),
    (["--signals", ","], "--signals must be a non-empty list of strings"),
    (["--img-size", "4"], "--img-size must be >= 8, got 4"),
    (["--finetune-top", "-1"], "--finetune-top must be >= 0, got -1"),
])
def test_bad_flags_are_refused_before_any_work(tmp_path, command, args, message):
    out = tmp_path / "x"
    result = cli(command, "--out", out, *args)
    assert_one_line_refusal(result, message)
    assert not out.exists()


def test_flags_win_over_a_bad_value_only_after_the_file_is_checked(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("sparsity = 0.99\n")  # a bad file is refused even when a flag would override it
    assert_one_line_refusal(cli("prune", "--config", config, "--sparsity", "0.5", "--out", tmp_path / "x"),
                            "config file", "sparsity must be in [0, 0.98]")
    with pytest.raises(ConfigError, match=r"^batch_size must be >= 1"):  # a Python caller, no such flag
        RunConfig.build(batch_size=0)


def test_resume_names_what_differs_as_the_user_gave_it(tmp_path):
    from mixprune.config import resolve_resume

    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"config": RunConfig(out=str(out)).to_dict()}))
    config = tmp_path / "c.toml"
    config.write_text("max-drop = 2.5\nseed = 0\n")
    with pytest.raises(ConfigError, match=rf"^--resume: --sparsity, max_drop in {re.escape(str(config))} differ"):
        resolve_resume(str(config), {"out": str(out), "sparsity": 0.5})
    config.write_text("max_drop = -1\n")
    with pytest.raises(ConfigError, match="max_drop must be >= 0"):
        resolve_resume(str(config), {"out": str(out)})
    assert resolve_resume(None, {"out": str(out)}).out == str(out)


def _cli_options() -> dict[str, dict[str, set[str]]]:
    """{command: {parameter name: its option strings}} for every mixprune command."""
    found = {}

    def walk(cmd, path):
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, path + [name])
        else:
            found[" ".join(path)] = {p.name: set(p.opts + p.secondary_opts) for p in cmd.params
                                     if isinstance(p, click.Option)}
    walk(main, [])
    return found


def test_flag_labels_are_real_flags_and_config_only_keys_have_none():
    options = _cli_options()
    for name, field in FIELDS.items():
        flags = set().union(*(options[command].get(name, set()) for command in ("prune", "run")))
        if field.flag is None:  # set in a --config file only
            assert not flags, (name, flags)
            assert flag_label(name) == name
        else:
            assert flag_label(name) == field.flag.name and field.flag.name in flags, (name, flags)


def test_each_setting_is_declared_once_in_the_table():
    """RunConfig's fields (names, order, types, defaults) and every command's option of a run setting
    (flag, help) come from config.FIELDS."""
    assert [f.name for f in dataclasses.fields(RunConfig)] == list(FIELDS)  # run.json keeps this order
    default = RunConfig()
    for f in dataclasses.fields(RunConfig):
        field = FIELDS[f.name]
        assert field.help, f.name
        assert f.type == field.annotation and getattr(default, f.name) == field.default, f.name
    assert RunConfig().model_args is not RunConfig().model_args  # a mutable default is copied
    seen = set()
    for command in ("prune", "run", "rank", "export", "bench"):  # the commands that take run settings
        for option in main.commands[command].params:
            field = FIELDS.get(option.name)
            if field is None or field.flag is None or option.opts != [field.flag.name]:
                continue  # rank's --device (parameter devices) is not the setting --devices
            seen.add(option.name)
            if (command, option.name) != ("prune", "out"):  # prune says --out is required
                assert option.help == field.help, (command, option.name)
    assert seen == {name for name, field in FIELDS.items() if field.flag is not None}


# --- defaults: shown by click, from RunConfig (and RUN_DEFAULTS for run), never overriding --config ------
@pytest.mark.parametrize("command, presets, fields", [
    ("prune", (), None), ("run", (RUN_DEFAULTS,), None),  # None: every option that sets a RunConfig field
    ("rank", (), {"max_drop", "objective"}), ("export", (), {"storage"}),
])
def test_help_shows_the_defaults_the_command_runs_with(command, presets, fields):
    expected = RunConfig.build(None, presets)  # what the command works with when no flag is given
    cmd = main.commands[command]
    ctx = click.Context(cmd, info_name=command)
    checked = set()
    for option in cmd.params:
        assert "default:" not in (option.help or "").lower(), (command, option.name)  # click writes them
        if option.name not in (FIELDS if fields is None else fields):
            continue
        value = getattr(expected, option.name)
        if value in (None, {}) or isinstance(value, bool) or option.name == "out":
            continue
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        text = option.get_help_record(ctx)[1]
        assert f"[default: {shown}]" in text or f"[default: {shown};" in text, (command, option.name, text)
        checked.add(option.name)
    if fields is not None:
        assert checked == fields
    elif command == "run":
        assert {"finetune_epochs", "finetune_top", "max_drop", "mode", "executor", "devices"} <= checked
    else:
        assert {"model", "signals", "targets", "finetune_epochs", "finetune_lr", "seed"} <= checked


@pytest.fixture
def stages(monkeypatch):
    """The RunConfig each `prune` or `run` hands to its stage; the stages themselves do not run."""
    import mixprune.pipeline
    import mixprune.pruning.stage

    seen = []

    def prune(config, resume=False):
        seen.append(config)
        return {"mixmatch": 0, "structured": 0, "baselines": 0, "best": "-", "dense_accuracy": 0.0}

    def pipeline(config, resume=False, force=False):
        seen.append(config)
        return {"out": Path(config.out), "timings_s": {}, "ranking": {"chosen_why": "-", "speed_note": "-"},
                "bundle": {"path": "-", "sha256": "0" * 64}}

    monkeypatch.setattr(mixprune.pruning.stage, "run_prune", prune)
    monkeypatch.setattr(mixprune.pipeline, "run_pipeline", pipeline)
    return seen


@pytest.mark.parametrize("command, presets", [("prune", ()), ("run", (RUN_DEFAULTS,))])
def test_flags_not_given_keep_the_config_files_values(tmp_path, stages, command, presets):
    config = tmp_path / "c.toml"
    config.write_text('model = "test_resnet"\nfinetune-epochs = 5\nsignals = ["gradient"]\nmax_drop = 2.5\n'
                      'seed = 7\n')
    result = cli(command, "--config", config, "--out", tmp_path / "r", "--seed", "3")
    assert result.exit_code == 0, result.output
    (built,) = stages
    assert (built.model, built.finetune_epochs, built.signals, built.max_drop) == ("test_resnet", 5, ("gradient",), 2.5)
    assert built.seed == 3  # a flag given wins over the file
    default = RunConfig.build(None, presets)  # the rest: the command's defaults
    assert (built.finetune_top, built.targets, built.img_size) == (default.finetune_top, default.targets, default.img_size)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", ["prune", "run"])
def test_resume_keeps_the_runs_settings(tmp_path, stages, command):
    out = tmp_path / "r"
    out.mkdir()
    stored = RunConfig(out=str(out), model="test_resnet", img_size=16, finetune_epochs=5, finetune_top=2, seed=7,
                       signals=("product",), max_drop=0.5)
    (out / "run.json").write_text(json.dumps({"config": stored.to_dict()}))
    result = cli(command, "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    assert stages[0].to_dict() == stored.to_dict()
    assert_one_line_refusal(cli(command, "--out", out, "--resume", "--seed", "8"), "--resume: --seed differ")
    assert len(stages) == 1


def test_quick_presets_apply_and_flags_win(stages):
    result = cli("run", "--quick", "--export-top", "5")
    assert result.exit_code == 0, result.output
    (built,) = stages
    assert (built.model, built.img_size, built.finetune_epochs) == \
        (QUICK_DEFAULTS["model"], QUICK_DEFAULTS["img_size"], QUICK_DEFAULTS["finetune_epochs"])
    assert built.export_top == 5 and built.out == str(Path("runs") / f"{QUICK_DEFAULTS['model']}-digits")


def _string_constants(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def test_messages_and_help_name_only_flags_that_exist():
    """Every --flag in a string of mixprune's packages is an option of some mixprune command
    (the agent's own --json-config and the flags of Ray's `ray start` aside)."""
    real = {flag for command in _cli_options().values() for opts in command.values() for flag in opts}
    real |= {"--help", "--json-config", "--version", "--head", "--address", "--resources"}
    bad = []
    for folder in ("mixprune", "pruning", "exporter", "devices", "benchmarks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for line, text in _string_constants(path):
                for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text):
                    if flag not in real:
                        bad.append(f"{path.relative_to(REPO)}:{line}: {flag}")
    assert not bad, bad


# --- rule tables (--rules) ----------------------------------------------------------------
BASE = 'name = "mine"\nextends = "generic"\n'
BAD_RULES = [
    (BASE + 'models = "resnet*"\n', "'models' must be a list of strings"),
    (BASE + "strategies = \"min\"\n", "'strategies' must be a non-empty list of strings, got 'min'"),
    (BASE + "strategies = []\n", "'strategies' must be a non-empty list of strings, got []"),
    (BASE + 'strategies = ["min", "nope"]\n', "'strategies' values must be strategy names"),
    (BASE + "training = 3\n", "'training' must be a table"),
    (BASE + "rules = [1]\n", "'rules' must be an array of tables"),
    (BASE + "colour = 1\n", "unknown field(s) 'colour'"),
    ('extends = "generic"\n', "missing field 'name'"),
    (BASE + '[[rules]]\nname = "r"\nmin = true\n', "rules[0].min must be a number in [0, 0.99], got true"),
    (BASE + '[[rules]]\nname = "r"\nmax = nan\n', "rules[0].max must be a number in [0, 0.99], got nan"),
    (BASE + '[[rules]]\nname = "r"\nmax = "lots"\n', "rules[0].max must be a number in [0, 0.99], got 'lots'"),
    (BASE + '[[rules]]\nname = "r"\npriority = true\n', "rules[0].priority must be an integer, got true"),
    (BASE + '[[rules]]\nname = "r"\nroles = "stem"\n', "rules[0].roles must be a list of strings"),
    (BASE + '[[rules]]\nname = "r"\nroles = ["stme"]\n', "rules[0].roles values must be one of patch_embed"),
    (BASE + '[[rules]]\nname = "r"\nmax_params = -1\n', "rules[0].max_params must be >= 0, got -1"),
    (BASE + '[[rules]]\nname = "r"\nmin_params = "10k"\n', "rules[0].min_params must be an integer >= 0"),
    (BASE + '[[rules]]\nname = "r"\nname_regex = "("\n', "rules[0].name_regex must be a regular expression"),
    (BASE + '[[rules]]\nname = 3\n', "rules[0].name must be a string, got 3"),
    (BASE + "[[rules]]\nmax = 0.5\n", "missing field rules[0].name"),
    (BASE + '[training]\nlr = "1e-3"\n', "[training] lr must be a number > 0, got '1e-3'"),
    (BASE + "[training]\nwarmup = 1\n", "[training] warmup must be in [0, 1) (a fraction of all steps), got 1"),
    (BASE + "[training]\nbatch_size = true\n", "[training] batch_size must be an integer >= 1, got true"),
    (BASE + "[training]\nschedule = 1\n", "[training] schedule must be one of constant, cosine, got 1"),
]


@pytest.mark.parametrize("text, message", BAD_RULES, ids=[m for _, m in BAD_RULES])
def test_bad_rule_table_is_one_line_and_nothing_is_written(tmp_path, text, message):
    rules = tmp_path / "rules.toml"
    rules.write_text(text)
    out = tmp_path / "x"
    result = cli("prune", "--model", "test_resnet", "--rules", rules, "--out", out)
    assert_one_line_refusal(result, f"rule table {rules}: ", message)
    assert not out.exists()


def test_unreadable_rule_table_and_config_files(tmp_path):
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\x89PNG\r\n\x00\xff")
    out = tmp_path / "x"
    assert_one_line_refusal(cli("prune", "--model", "test_resnet", "--rules", binary, "--out", out),
                            f"cannot read rule table {binary}")
    assert_one_line_refusal(cli("run", "--config", binary, "--out", out), f"cannot read config file {binary}")
    config = tmp_path / "c.toml"
    config.write_text(f'model = "test_resnet"\nrules = {json.dumps(str(tmp_path))}\n')
    assert_one_line_refusal(cli("prune", "--config", config, "--out", out), "is a directory, not a file")
    assert not out.exists()


# --- device profiles (--device / devices show) ---------------------------------------------
BAD_PROFILES = [
    (VALID_PROFILE.replace("cores = 1", 'cores = "1"'), "'cores' must be an integer >= 0, got '1'"),
    (VALID_PROFILE.replace("cores = 1", "cores = true"), "'cores' must be an integer >= 0, got true"),
    (VALID_PROFILE.replace("cores = 1", "cores = 1\nmemory_mb = nan"), "'memory_mb' must be a number >= 0, got nan"),
    (VALID_PROFILE.replace("cores = 1", "cores = 1\nmemory_mb = {a = 1}"), "'memory_mb' must be a number >= 0"),
    (VALID_PROFILE.replace("cores = 1", 'cores = 1\nrunner = "local"').replace('[runner]\nkind = "local"\n', ""),
     "'runner' must be a table (a [runner] section), got 'local'"),
    (VALID_PROFILE.replace("[onnxruntime]\nintra_op_threads = 1\n", "").replace("cores = 1", "cores = 1\nonnxruntime = 4"),
     "'onnxruntime' must be a table (a [onnxruntime] section), got 4"),
    (VALID_PROFILE.replace('kind = "local"', ""), "missing field 'runner.kind' (one of emulated, local, ssh)"),
    (VALID_PROFILE.replace('kind = "local"', "kind = 3"), "'runner.kind' must be one of emulated, local, ssh, got 3"),
    (VALID_PROFILE.replace("runs = 5", "runs = 5\nshapes = \"1x3x16x16\""), "'benchmark.shapes' must be a table"),
    (VALID_PROFILE.replace("runs = 5", "runs = 5.0"), "'benchmark.runs' must be an integer >= 1, got 5.0"),
    (VALID_PROFILE + "\n[budget]\nlatency_ms = inf\n", "'budget.latency_ms' must be a number >= 0, got inf"),
    (VALID_PROFILE.replace("intra_op_threads = 1", 'intra_op_threads = 1\nexecution_providers = "CPU"'),
     "'onnxruntime.execution_providers' must be a list of strings, got 'CPU'"),
    (VALID_PROFILE.replace('kind = "local"', 'kind = "ssh"\nhost = "pi"\nstrict_host_key_checking = "no"'),
     "'runner.strict_host_key_checking' must be true or false, got 'no'"),
    (VALID_PROFILE + "\n[extra]\na = 1\n", "unknown field(s) 'extra'"),
]


@pytest.mark.parametrize("text, message", BAD_PROFILES, ids=[m.split(" must")[0] for _, m in BAD_PROFILES])
def test_bad_device_profile_is_one_line(tmp_path, text, message):
    profile = tmp_path / "bad.toml"
    profile.write_text(text)
    assert_one_line_refusal(cli("devices", "show", profile), f"{profile}: ", message)
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not read: the profile is refused first")
    assert_one_line_refusal(cli("bench", model, "--device", profile), message)
    config = tmp_path / "run.toml"
    config.write_text(f"devices = [{json.dumps(str(profile))}]\n")
    out = tmp_path / "x"
    assert_one_line_refusal(cli("run", "--config", config, "--out", out), message)
    assert not out.exists()


def test_the_valid_profile_of_these_tests_loads(tmp_path):
    profile = tmp_path / "good.toml"
    profile.write_text(VALID_PROFILE)
    result = cli("devices", "show", profile)
    assert result.exit_code == 0, result.output


# --- the shared checker ---------------------------------------------------------------------
def test_field_descriptions_and_conversions():
    assert Field("number", range="[0, 1)").allowed() == "a number in [0, 1)"
    assert Field("int", range=">= 1").allowed() == "an integer >= 1"
    assert Field("str", choices=("a", "b")).allowed() == "one of a, b"
    assert Field("numbers", range="(0, 1]", nonempty=True).allowed() == "a non-empty list of numbers, each in (0, 1]"
    assert check_value(Field("numbers"), "0.5, 1", "x") == (0.5, 1.0)
    assert check_value(Field("names"), "a, b,", "x") == ("a", "b")
    assert check_value(Field("number", optional=True), None, "x") is None
    with pytest.raises(ConfigError, match=r"^x must be a number, got true$"):
        check_value(Field("number"), True, "x")
    with pytest.raises(ValueError, match="not a range"):
        Field("number", range="0..1")


# mixprune.config reads the signal and baseline names from mixprune.pruning.scores, which imports no torch
HEAVY = ("torch", "timm", "onnx", "mixprune.exporter", "mixprune.pruning.stage", "mixprune.pruning.signals")


def test_settings_modules_stay_light():
    imports = ("mixprune.settings", "mixprune.config", "mixprune.devices.profiles", "mixprune.cli")
    assert heavy_imports(HEAVY, imports=imports) == []


def test_ranking_report_and_release_load_no_stage_code():
    """They read records only (ARCHITECTURE.md, import rules): no pruning, exporter or executor module,
    and so neither the run config (mixprune.config reads the pruning and executor registries)."""
    stage_code = ("mixprune.pruning", "mixprune.exporter", "mixprune.executors", "mixprune.config", "torch", "onnx")
    assert heavy_imports(stage_code, imports=("mixprune.release.ranking", "mixprune.release.report", "mixprune.release.bundle")) == []


@pytest.mark.parametrize("command", [["--help"], ["prune", "--help"], ["run", "--help"]])
def test_help_stays_light(command):
    assert heavy_imports(("torch", "timm", "onnx", "mixprune.exporter"), command=command) == []


def test_the_light_check_sees_heavy_imports():
    assert {"mixprune.pruning.stage", "torch"} <= set(heavy_imports(HEAVY, imports=("mixprune.pruning.stage",)))
