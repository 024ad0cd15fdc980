"""Causal-LM loss computed only where it counts, without materialising all the logits.

`completion_loss(hidden, labels, head)` returns the *sum* of token cross-entropies over positions
whose next-token label is not -100 (the caller divides by the token count of the whole optimizer
step, so gradient accumulation gives an exact token mean).

Only the hidden states of labelled positions reach the output head: prompt and padding positions
never get logits. For a plain `nn.Linear` head without bias, the head and the cross-entropy run
chunk by chunk inside one autograd function that computes the gradient already in the forward pass
(the "fused linear cross-entropy" idea of Liger-Kernel): at most `chunk × vocab` logits exist at any
time, and nothing is recomputed in the backward pass. Anything else (a LoRA-adapted head, a head
with bias) goes through the plain head + `functional.cross_entropy`.

Both paths apply the model's own logit transform (`LogitTransform.of(config)`): Cohere's
`logit_scale` (multiply), Granite's `logits_scaling` (divide) and Gemma-2/3's
`final_logit_softcapping` (`cap · tanh(logits / cap)`), in the order the models' `forward` applies
them, so the objective is the one `model(input_ids, labels=...)` computes. A family whose `forward`
does something else is caught by `verify_objective`, which the runner calls once before training.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class LogitTransform:
    """logits = softcap(scale · (h · Wᵀ)), softcap(x) = cap · tanh(x / cap) when `softcap` is set."""

    scale: float = 1.0
    softcap: float | None = None

    @classmethod
    def of(cls, config: Any) -> LogitTransform:
        """The transform a model config asks for (identity for Llama, Qwen, Mistral, Phi-3, ...)."""
        scale = 1.0
        logit_scale = getattr(config, "logit_scale", None)  # Cohere, Cohere2: logits * logit_scale
        if isinstance(logit_scale, int | float) and not isinstance(logit_scale, bool):
            scale *= float(logit_scale)
        logits_scaling = getattr(config, "logits_scaling", None)  # Granite family: logits / logits_scaling
        if isinstance(logits_scaling, int | float) and not isinstance(logits_scaling, bool) and logits_scaling:
            scale /= float(logits_scaling)
        cap = getattr(config, "final_logit_softcapping", None)  # Gemma-2/3: cap * tanh(logits / cap)
        softcap = float(cap) if isinstance(cap, int | float) and not isinstance(cap, bool) and cap > 0 else None
        return cls(scale, softcap)

    @property
    def identity(self) -> bool:
        """True when logits are the head's output unchanged."""
        return self.scale == 1.0 and self.softcap is None

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """The transform on raw head outputs (differentiable)."""
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(T(h_i · Wᵀ), y_i) for a logit transform T (scale, then optional soft-cap), with
    dL/dh (and dL/dW when W trains) computed in the forward pass."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        chunk: int,
        scale: float = 1.0,
        softcap: float | None = None,
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
            if scale != 1.0:
                logits.mul_(scale)
            tanh = None
            if softcap is not None:
                tanh = logits.div_(softcap).tanh_()
                logits = tanh * softcap
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, y[:, None]).squeeze(1)).sum()
            if need_h or need_w:
                probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place
                probs[rows[: h.shape[0]], y] -= 1.0  # d CE / d logits
                if tanh is not None:  # d softcap(x) / dx = 1 - tanh²(x / cap)
                    probs.mul_(1.0 - tanh.square_())
                if scale != 1.0:
                    probs.mul_(scale)
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
        return gh, gw, None, None, None, None


def fused_head_supported(head: torch.nn.Module, config: Any) -> bool:
    """True when the head is a bias-free `nn.Linear` (any `LogitTransform` is applied inside)."""
    return type(head) is torch.nn.Linear and head.bias is None


def completion_loss(hidden: torch.Tensor, labels: torch.Tensor, head: torch.nn.Module, config: Any) -> torch.Tensor:
    """Summed cross-entropy over labelled next-token positions (see the module docstring)."""
    h, y = select_targets(hidden, labels)
    if y.numel() == 0:
        return hidden.sum() * 0.0  # keeps the graph connected; contributes nothing
    transform = LogitTransform.of(config)
    if fused_head_supported(head, config):
        assert isinstance(head, torch.nn.Linear)
        chunk = max(64, CHUNK_ELEMENTS // max(1, head.out_features))
        args = (h, head.weight, y, chunk, transform.scale, transform.softcap)
        if torch.is_grad_enabled():
            result: torch.Tensor = _FusedLinearCrossEntropy.apply(*args)
            return result
        return _FusedLinearCrossEntropy.forward(_NoGradCtx(), *args)
    logits = transform.apply(head(h).float())
    return functional.cross_entropy(logits, y, reduction="sum")


class _NoGradCtx:
    """Stand-in autograd context for evaluation: nothing needs a gradient."""

    needs_input_grad = (False, False, False, False, False, False)

    def save_for_backward(self, *tensors: Any) -> None:
        """Nothing to save."""


def objective_gap(model: Any, input_ids: list[int], labels: list[int]) -> tuple[float, float]:
    """(our mean loss, the model's own `forward(labels=...)` loss) on one example, no gradients.

    The runner compares the two once before training: a family whose `forward` transforms its
    logits in a way `LogitTransform` does not know is refused instead of trained on another objective.
    """
    from bigmodel_training.modeling import model_parts

    decoder, head, config = model_parts(model)
    device = next(model.parameters()).device
    ids = torch.tensor([input_ids], device=device)
    target = torch.tensor([labels], device=device)
    positions = torch.arange(ids.shape[1], device=device)[None]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            hidden = decoder(input_ids=ids, position_ids=positions, use_cache=False)[0]
            count = int((target[:, 1:] != IGNORE_INDEX).sum())
            ours = float(completion_loss(hidden, target, head, config).item()) / max(1, count)
            # MoE configs may ask forward to add the router's load-balancing loss; the trainer does not.
            extra = {"output_router_logits": False} if hasattr(config, "output_router_logits") else {}
            out = model(input_ids=ids, position_ids=positions, labels=target, use_cache=False, **extra)
            reference = float(out.loss.item())
    finally:
        model.train(was_training)
    return ours, reference


def objective_gap_via(root: Any, input_ids: list[int], labels: list[int], device: Any) -> tuple[float, float]:
    """`objective_gap` through a wrapped model's own forward (FSDP: its hooks gather the weights);
    the model must accept `completion_labels` (data_parallel.install_loss_forward)."""
    ids = torch.tensor([input_ids], device=device)
    target = torch.tensor([labels], device=device)
    positions = torch.arange(ids.shape[1], device=device)[None]
    count = int((target[:, 1:] != IGNORE_INDEX).sum())
    was_training = root.training
    root.eval()
    try:
        with torch.no_grad():
            ours = float(root(input_ids=ids, position_ids=positions, completion_labels=target).item()) / max(1, count)
            out = root(input_ids=ids, position_ids=positions, labels=target, use_cache=False)
            reference = float(out.loss.item())
    finally:
        root.train(was_training)
    return ours, reference
