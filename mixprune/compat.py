"""Import timm (and so torchvision) whichever torchvision sits beside torch.

timm imports torchvision, and torchvision's ``_meta_registrations`` calls
``torch.library.register_fake("torchvision::nms")`` (and ``qnms``) on ops that its C++
extension ``_C.so`` defines. Three cases:

1. torchvision's extension fails to load (the README's CPU torch + PyPI torchvision):
   the ops do not exist and the import dies with "operator torchvision::nms does not
   exist". mixprune never calls them, so we declare just their schemas and import again.
2. A matched torch + torchvision: the extension defines the ops itself while it loads.
   Declaring them beforehand would abort the process ("Tried to register an operator
   ... multiple times"), so we declare nothing until an import has actually failed.
3. No torchvision: timm cannot import at all; say so in one line and how to install the
   torchvision built for the installed torch without pip replacing torch.

The retry is clean: a failed ``register_fake`` removes its fake kernel again, and the
half-imported ``torchvision*`` modules are dropped from ``sys.modules`` first.
"""

import importlib
import re
import sys

from .errors import ModelError

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_MISSING_OP = re.compile(r"operator torchvision::(\w+) does not exist")
_library = None  # kept alive: dropping the Library object would drop the schemas


def import_timm():
    """Return the timm module, importing torchvision first with the fix above."""
    _import_torchvision()
    return importlib.import_module("timm")


def _import_torchvision():
    if sys.modules.get("torchvision") is not None:
        return
    try:
        importlib.import_module("torchvision")
        return
    except ModuleNotFoundError as exc:
        if exc.name != "torchvision":
            raise
        raise ModelError(_no_torchvision_message()) from None
    except RuntimeError as exc:
        match = _MISSING_OP.search(str(exc))
        if not match or match.group(1) not in _SCHEMAS:
            raise
    # The extension has had its chance to register the ops by now: declare what is missing.
    _forget_torchvision()
    _declare_missing_ops()
    importlib.import_module("torchvision")


def _forget_torchvision():
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]


def _declare_missing_ops():
    global _library
    import torch

    missing = [name for name in _SCHEMAS if not _op_exists(torch, name)]
    if _library is None:
        _library = torch.library.Library("torchvision", "FRAGMENT")
    for name in missing:
        _library.define(_SCHEMAS[name])


def _op_exists(torch, name):
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def _no_torchvision_message():
    import torch

    version = torch.__version__.split("+")[0]
    return (f"timm needs torchvision, which is not installed; install the one made for your "
            f"torch {version} without replacing it: pip install torch=={version} torchvision")
