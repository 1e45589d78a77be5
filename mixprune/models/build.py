"""timm models: names, construction from a spec, checkpoints and pretrained weights.

A ``ModelSpec`` is everything needed to rebuild the architecture in another stage or on
another machine; it is stored in ``run.json`` and weights travel as safetensors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
from pathlib import Path

from ..compat import import_timm
from ..errors import CheckpointError, ModelError


@dataclasses.dataclass
class ModelSpec:
    name: str
    num_classes: int
    in_chans: int
    img_size: int
    kwargs: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: dict) -> "ModelSpec":
        return cls(**record)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, self.in_chans, self.img_size, self.img_size)


def list_models(pattern: str | None = None) -> list[str]:
    timm = import_timm()
    return timm.list_models(pattern or "*")


def check_model_name(name: str) -> None:
    timm = import_timm()
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `mixprune models list PATTERN`"
    raise ModelError(f"unknown model '{name}'{hint}")


def build_model(spec: ModelSpec, *, pretrained: bool = False, pretrained_file: str | None = None):
    """Create the timm model of ``spec`` (random weights unless ``pretrained``).

    ``img_size`` is passed to architectures that take it (ViT, Swin, ...) and left out for
    those that do not (CNNs adapt to any size through global pooling).
    """
    check_model_name(spec.name)
    timm = import_timm()
    kwargs = dict(num_classes=spec.num_classes, in_chans=spec.in_chans, **spec.kwargs)
    if pretrained:
        kwargs["pretrained"] = True
        if pretrained_file:
            if not Path(pretrained_file).is_file():
                raise ModelError(f"pretrained file {pretrained_file} does not exist")
            kwargs["pretrained_cfg_overlay"] = dict(file=str(pretrained_file))
    offline = pretrained and not pretrained_file and not _hub_reachable()
    try:
        with _cache_only_hub(offline):
            try:
                return timm.create_model(spec.name, img_size=spec.img_size, **kwargs)
            except TypeError as exc:
                if "img_size" not in str(exc):
                    raise
                return timm.create_model(spec.name, **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:
        if pretrained and not pretrained_file:
            raise ModelError(
                f"cannot load pretrained weights for '{spec.name}' (no network access to the "
                f"model hub?): pass --pretrained-file FILE (pretrained_file in a --config file) with a local copy, or --checkpoint FILE"
            ) from exc
        raise ModelError(f"cannot build '{spec.name}' with {kwargs}: {_first_line(exc)}") from exc
    except TypeError as exc:
        raise ModelError(f"cannot build '{spec.name}' with {spec.kwargs}: {_first_line(exc)}") from exc


def _hub_reachable(timeout: float = 3.0) -> bool:
    import os
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _cache_only_hub(enabled: bool):
    """Without a reachable hub, let timm look in the local cache only (instead of retrying
    each download for a minute); huggingface_hub reads its offline flag from this constant."""
    if not enabled:
        yield
        return
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_state_dict(path: str | Path) -> dict:
    """Read a safetensors file or a torch checkpoint (``weights_only=True``)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means the same to the user
        raise CheckpointError(f"cannot read checkpoint {path}: {_first_line(exc)}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights(model, path: str | Path) -> None:
    """Load a checkpoint strictly, naming every key that does not fit."""
    load_state(model, read_state_dict(path), f"checkpoint {path}")


def load_state(model, state: dict, source: str) -> None:
    """Load a state dict (torch tensors or numpy arrays) strictly; ``source`` names it in errors."""
    import torch

    state = {k: torch.from_numpy(v) if not isinstance(v, torch.Tensor) else v for k, v in state.items()}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            parts.append("shape mismatch: " + ", ".join(
                f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched[:4]))
        if missing:
            parts.append("missing: " + ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else ""))
        if unexpected:
            parts.append("unexpected: " + ", ".join(unexpected[:4]) + (" ..." if len(unexpected) > 4 else ""))
        raise CheckpointError(f"{source} does not fit the model ({'; '.join(parts)})")
    model.load_state_dict(state, strict=True)


def numpy_state(model_or_state) -> dict:
    """The state dict as numpy arrays (sharing memory with the tensors), for the run directory."""
    state = model_or_state if isinstance(model_or_state, dict) else model_or_state.state_dict()
    return {k: v.detach().cpu().contiguous().numpy() for k, v in state.items()}
