"""Speed-ups applied to a prepared model; each keeps the maths of the plain model.

- `fuse_lora_adds`: peft computes `base(x) + lora_B(lora_A(dropout(x))) * scaling` as a matmul, a
  multiply and an add, each a full pass over the (tokens × out_features) output. Here the update
  is folded into one `addmm` (output + scaling · u·Bᵀ, with u = A·x of width r), so the large
  output is read and written once. Applied only where it is exactly peft's plain LoRA (one active
  adapter, no DoRA/variants, not merged); anything else keeps peft's forward.
- `compile_layers`: regional `torch.compile` of each decoder layer. The layers are identical, so
  the first compilation is reused by the others, and the whole stack compiles in well under a
  minute instead of the many minutes a whole-model compile takes.
"""

from __future__ import annotations

import logging
import types
from typing import Any

import torch
from torch.nn import functional

log = logging.getLogger(__name__)


def _fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    if args or kwargs or self.disable_adapters or self.merged:
        return self._peft_forward(x, *args, **kwargs)
    result = self.base_layer(x)
    name = self.active_adapters[0]
    u = functional.linear(self.lora_dropout[name](x), self.lora_A[name].weight)
    out = torch.addmm(
        result.reshape(-1, result.shape[-1]),
        u.reshape(-1, u.shape[-1]),
        self.lora_B[name].weight.t(),
        alpha=self.scaling[name],
    )
    return out.view(result.shape)


def fuse_lora_adds(model: torch.nn.Module) -> int:
    """Switch every plain peft LoRA Linear to the fused forward; return how many were switched."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:
        return 0
    switched = 0
    for module in model.modules():
        if type(module) is not LoraLinear:
            continue
        adapters = list(module.active_adapters)
        if (
            len(adapters) != 1
            or module.lora_variant.get(adapters[0]) is not None
            or getattr(module, "lora_bias", {}).get(adapters[0], False)
            or not isinstance(module.base_layer, torch.nn.Linear)
        ):
            continue
        module._peft_forward = module.forward  # type: ignore[assignment]
        module.forward = types.MethodType(_fused_forward, module)  # type: ignore[method-assign]
        switched += 1
    return switched


def compile_layers(decoder: torch.nn.Module) -> int:
    """Compile each decoder layer in place (regional compilation); return how many."""
    layers = getattr(decoder, "layers", None)
    if layers is None:
        log.warning("no decoder.layers to compile; running eagerly")
        return 0
    for layer in layers:
        layer.compile(dynamic=False)
    return len(layers)
