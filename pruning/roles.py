"""Layer discovery: every prunable weight by parameter name, with its architectural role.

Prunable = the >= 2-dim weight of a convolution or linear layer. Roles, stage and block
indices come from module types and timm's naming conventions, so rule tables and
strategies can be written once for any timm model.
"""

from __future__ import annotations

import dataclasses
import re

import torch
from torch import nn

# Ordered: the first matching pattern names the role (classifier and stem are decided first).
ROLE_PATTERNS = (
    ("patch_embed", re.compile(r"(^|\.)patch_embed\.")),
    ("downsample", re.compile(r"(^|\.)(downsample|shortcut|skip|reduction)(\.|$)")),
    ("attention_qkv", re.compile(r"(^|\.)attn\.(qkv|q|k|v|kv|q_proj|k_proj|v_proj)\.")),
    ("attention_proj", re.compile(r"(^|\.)attn\.(proj|out_proj|o_proj)\.")),
    ("mlp", re.compile(r"(^|\.)mlp\.")),
)
# (stage, block) from the usual timm layouts; ViT-style models have blocks but no stages.
STAGE_PATTERNS = (
    re.compile(r"(?:^|\.)layer(?P<stage>\d+)\.(?P<block>\d+)\."),  # ResNet
    re.compile(r"(?:^|\.)(?:stages|layers|levels)\.(?P<stage>\d+)\.(?:blocks\.)?(?P<block>\d+)\."),  # ConvNeXt, Swin
    re.compile(r"(?:^|\.)(?:stages|layers)\.(?P<stage>\d+)\."),  # stage-level modules (downsample)
    re.compile(r"(?:^|\.)blocks\.(?P<stage>\d+)\.(?P<block>\d+)\."),  # EfficientNet, MobileNet
    re.compile(r"(?:^|\.)blocks\.(?P<block>\d+)\."),  # ViT, DeiT
)


@dataclasses.dataclass
class Layer:
    name: str  # parameter name, e.g. "layer1.0.conv1.weight"
    kind: str  # "conv" or "linear"
    shape: tuple
    params: int
    role: str
    stage: int | None
    block: int | None
    position: float  # 0 (input side) .. 1 (output side), in parameter order
    depthwise: bool = False


def _is_prunable(module: nn.Module) -> str | None:
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, nn.Linear):
        return "linear"
    return None


def _classifier_params(model: nn.Module) -> set[str]:
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Module):
        return set()
    head_ids = {id(p) for p in head.parameters()}
    return {name for name, p in model.named_parameters() if id(p) in head_ids}


def _stage_block(name: str) -> tuple[int | None, int | None]:
    for pattern in STAGE_PATTERNS:
        found = pattern.search(name)
        if found:
            groups = found.groupdict()
            stage = int(groups["stage"]) if groups.get("stage") is not None else None
            block = int(groups["block"]) if groups.get("block") is not None else None
            return stage, block
    return None, None


def discover_layers(model: nn.Module) -> list[Layer]:
    """All prunable weights of ``model`` in parameter order."""
    classifier = _classifier_params(model)
    prunable = {}
    for module_name, module in model.named_modules():
        kind = _is_prunable(module)
        weight = getattr(module, "weight", None)
        if kind and isinstance(weight, torch.nn.Parameter) and weight.dim() >= 2:
            prunable[f"{module_name}.weight" if module_name else "weight"] = (kind, module)
    names = [n for n, _ in model.named_parameters() if n in prunable]
    if not names:
        return []
    if not classifier:  # models without get_classifier: the last linear layer
        linears = [n for n in names if prunable[n][0] == "linear"]
        classifier = {linears[-1]} if linears else set()
    layers = []
    first_conv_seen = False
    for index, name in enumerate(names):
        kind, module = prunable[name]
        weight = module.weight
        role = None
        if name in classifier:
            role = "classifier"
        else:
            role = next((r for r, pattern in ROLE_PATTERNS if pattern.search(name)), None)
            if role is None and kind == "conv" and not first_conv_seen:
                role = "stem"
        first_conv_seen = first_conv_seen or kind == "conv"
        depthwise = kind == "conv" and module.groups > 1 and module.groups == module.in_channels
        if role is None:
            role = "depthwise" if depthwise else kind
        stage, block = _stage_block(name)
        layers.append(Layer(
            name=name, kind=kind, shape=tuple(weight.shape), params=weight.numel(), role=role,
            stage=stage, block=block, position=index / max(len(names) - 1, 1), depthwise=depthwise,
        ))
    _stages_from_blocks(layers)
    return layers


def _stages_from_blocks(layers: list[Layer]) -> None:
    """Isotropic models (ViT, DeiT) have blocks but no stages: use block quartiles as stages."""
    if any(layer.stage is not None for layer in layers):
        return
    blocks = [layer.block for layer in layers if layer.block is not None]
    if not blocks:
        return
    depth = max(blocks) + 1
    for layer in layers:
        if layer.block is not None:
            layer.stage = layer.block * 4 // depth


def prunable_names(model: nn.Module) -> list[str]:
    """The prunable weights of ``model``, by parameter name, sorted."""
    return sorted(layer.name for layer in discover_layers(model))


def prunable_parameters(model: nn.Module, layers: list[Layer]) -> dict[str, torch.nn.Parameter]:
    params = dict(model.named_parameters())
    return {layer.name: params[layer.name] for layer in layers}
