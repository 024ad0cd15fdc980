"""Causal-LM loss computed only where it counts, without materialising all the logits.

`completion_loss(hidden, labels, head)` returns the *sum* of token cross-entropies over positions
whose next-token label is not -100 (the caller divides by the token count of the whole optimizer
step, so gradient accumulation gives an exact token mean).

Only the hidden states of labelled positions reach the output head: prompt and padding positions
never get logits. For a plain `nn.Linear` head without bias, the head and the cross-entropy run
chunk by chunk inside one autograd function that computes the gradient already in the forward pass
(the "fused linear cross-entropy" idea of Liger-Kernel): at most `chunk × vocab` logits exist at any
time, and nothing is recomputed in the backward pass. Anything else (a LoRA-adapted head, a head
with bias or logit soft-capping) goes through the plain head + `functional.cross_entropy`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional

from bigmodel_training.render import IGNORE_INDEX

# Elements of one fp32 logits chunk (256 Mi elements = 1 GiB).
CHUNK_ELEMENTS = 1 << 28


def select_targets(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states at positions t whose label at t+1 is real, and those labels (flattened)."""
    shifted = labels[:, 1:]
    keep = shifted != IGNORE_INDEX
    return hidden[:, :-1][keep], shifted[keep]


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(h_i · Wᵀ, y_i), with dL/dh (and dL/dW when W trains) computed in the forward pass."""

    @staticmethod
    def forward(
        ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int
    ) -> torch.Tensor:
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        compute = hidden.dtype
        w = weight.to(compute)
        accumulate = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        total = torch.zeros((), dtype=accumulate, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=accumulate, device=weight.device) if need_w else None
        rows = torch.arange(min(chunk, hidden.shape[0]), device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk]
            y = targets[start : start + chunk]
            logits = (h @ w.t()).to(accumulate)
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, y[:, None]).squeeze(1)).sum()
            if need_h or need_w:
                probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place
                probs[rows[: h.shape[0]], y] -= 1.0  # d CE / d logits
                d_logits = probs.to(compute)
                if grad_h is not None:
                    grad_h[start : start + chunk] = d_logits @ w
                if grad_w is not None:
                    grad_w += (d_logits.t() @ h).to(accumulate)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None


def fused_head_supported(head: torch.nn.Module, config: Any) -> bool:
    """True when the head is a bias-free `nn.Linear` and the model applies no logit transform."""
    if type(head) is not torch.nn.Linear or head.bias is not None:
        return False
    for attribute in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale"):
        value = getattr(config, attribute, None)
        if value not in (None, 1, 1.0):
            return False
    return True


def completion_loss(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module, config: Any) -> torch.Tensor:
    """Summed cross-entropy over labelled next-token positions (see the module docstring)."""
    h, y = select_targets(hidden, labels)
    if y.numel() == 0:
        return hidden.sum() * 0.0  # keeps the graph connected; contributes nothing
    if fused_head_supported(head, config):
        assert isinstance(head, torch.nn.Linear)
        chunk = max(64, CHUNK_ELEMENTS // max(1, head.out_features))
        if torch.is_grad_enabled():
            result: torch.Tensor = _FusedLinearCrossEntropy.apply(h, head.weight, y, chunk)
            return result
        return _FusedLinearCrossEntropy.forward(_NoGradCtx(), h, head.weight, y, chunk)
    logits = head(h).float()
    return functional.cross_entropy(logits, y, reduction="sum")


class _NoGradCtx:
    """Stand-in autograd context for evaluation: nothing needs a gradient."""

    needs_input_grad = (False, False, False, False)

    def save_for_backward(self, *tensors: Any) -> None:
        """Nothing to save."""
