"""mixprune.compat: timm loads whichever torchvision sits beside torch (issue 11).

Op registration is process-global, so each situation runs the real CLI in its own
subprocess. Situations CI cannot install are simulated by a stand-in ``torchvision``
first on PYTHONPATH: its ``extension.py`` plays the C++ extension (``_C.so``), and
everything else (``_meta_registrations`` with its ``register_fake("torchvision::nms")``,
``ops``, ``transforms``, ...) is the installed torchvision's own Python code.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

LIST = ["models", "list", "resnet1*"]

# Stand-in extension for a matched pair: like _C.so's TORCH_LIBRARY_FRAGMENT(torchvision, m)
# static initializers (csrc/ops/nms.cpp) it defines the ops as it loads, and a duplicate
# kills the process the way the C++ exception in a static initializer does (abort, 134).
MATCHED_EXTENSION = '''
import os, sys, torch
try:
    _lib = torch.library.Library("torchvision", "FRAGMENT")
    _lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
except Exception as exc:
    sys.stderr.write(f"terminate called after throwing an instance of 'std::runtime_error': {exc}\\n")
    sys.stderr.flush()
    os.abort()
'''
# Stand-in for the README's install: _C.so fails to load, so no op is defined.
BROKEN_EXTENSION = ""
EXTENSION_API = '''
def _has_ops():  # False even when matched, so the other C++ ops need no stand-in
    return False
def _assert_has_ops():
    raise RuntimeError("stand-in torchvision has no C++ ops")
def _load_library(lib_name):
    return False
def _check_cuda_version():
    return -1
'''


def _real_torchvision_dir() -> Path:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torchvision is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def _stand_in(root: Path, extension: str) -> Path:
    real = _real_torchvision_dir()
    pkg = root / "torchvision"
    pkg.mkdir()
    (pkg / "extension.py").write_text(extension + EXTENSION_API)
    (pkg / "__init__.py").write_text(
        f"__path__.append({str(real)!r})  # the real pure-Python submodules\n"
        f"_init = {str(real / '__init__.py')!r}\n"
        "exec(compile(open(_init).read(), _init, 'exec'))\n")
    return root


def _popen(cmd, cwd, pythonpath=None):
    env = dict(os.environ, MIXPRUNE_QUIET="1")
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(pythonpath), env.get("PYTHONPATH")) if p)
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _cli(args, prelude=""):
    code = f"import sys; {prelude}\nfrom mixprune.cli import main\nsys.argv = ['mixprune', *{args!r}]\nmain()"
    return [sys.executable, "-c", code]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Start every situation's subprocess at once (each spends ~15 s importing torch)."""
    script = Path(sys.executable).with_name("mixprune")
    installed = [str(script), *LIST] if script.exists() else [sys.executable, "-m", "mixprune.cli", *LIST]
    matched = _stand_in(tmp_path_factory.mktemp("matched"), MATCHED_EXTENSION)
    broken = _stand_in(tmp_path_factory.mktemp("broken"), BROKEN_EXTENSION)
    cwd = tmp_path_factory.mktemp("cwd")
    procs = {
        "installed": _popen(installed, cwd),
        "matched": _popen(_cli(LIST), cwd, matched),
        "broken": _popen(_cli(LIST), cwd, broken),
        "absent": _popen(_cli(LIST, prelude="sys.modules['torchvision'] = None"), cwd),
    }
    done = {}

    def result(name):
        if name not in done:
            out, err = procs[name].communicate(timeout=300)
            done[name] = subprocess.CompletedProcess(procs[name].args, procs[name].returncode, out, err)
        return done[name]

    yield result
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("situation", [
    "installed",  # whatever torchvision this environment has (the README's: its extension fails to load)
    "matched",  # the extension registers nms itself: the old compat declared it first and aborted (exit 134)
    "broken",  # a stand-in whose extension fails to load, as PyPI's beside the CPU torch
])
def test_models_list_works(runs, situation):
    proc = runs(situation)
    assert proc.returncode == 0, proc.stderr
    assert "resnet18" in proc.stdout.split()


def test_no_torchvision_is_one_clear_line(runs):
    proc = runs("absent")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: timm needs torchvision, which is not installed")
    import torch

    assert f"pip install torch=={torch.__version__.split('+')[0]} torchvision" in lines[0]
