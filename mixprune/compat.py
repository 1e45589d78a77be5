"""Import timm safely beside the CPU build of torch.

PyPI's torchvision wheels register C++ ops (``torchvision::nms``) that the CPU torch
wheel does not provide; ``import torchvision`` (and so ``import timm``) then fails with
"operator torchvision::nms does not exist". mixprune never calls those ops, so when they
are missing we declare their schemas before torchvision loads; torchvision's Python-side
registrations then find them and the import succeeds. With a matching torchvision the
real ops exist and nothing is touched.
"""

import importlib
import sys

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # kept alive: dropping the Library object would drop the schemas


def _declare_missing_torchvision_ops():
    global _library
    if "torchvision" in sys.modules:
        return
    import torch

    missing = [name for name in _SCHEMAS if not _op_exists(torch, name)]
    if not missing:
        return
    _library = torch.library.Library("torchvision", "DEF")
    for name in missing:
        _library.define(_SCHEMAS[name])


def _op_exists(torch, name):
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def import_timm():
    """Return the timm module, importing it with the torchvision fix applied."""
    _declare_missing_torchvision_ops()
    return importlib.import_module("timm")
