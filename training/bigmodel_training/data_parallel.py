"""The model across several processes: DDP where it fits on one GPU, FSDP2 where it must be sharded.

- **single**: one process (no torch.distributed at all).
- **ddp**: `torch.nn.parallel.DistributedDataParallel`. Every rank holds the whole model; only the
  trainable parameters are registered with DDP (the frozen base of LoRA/QLoRA is never broadcast or
  all-reduced), so a LoRA step all-reduces a few MB. QLoRA runs this way.
- **fsdp**: FSDP2, `torch.distributed.fsdp.fully_shard` on every decoder layer and on the whole
  model. Every rank builds the model on the meta device (no memory), shards it, allocates only its
  shards, and rank 0 — the only one that reads the weights from disk — broadcasts them
  (`set_model_state_dict(..., broadcast_from_rank0=True)`), so host memory holds one copy of the
  model per node, not one per GPU. Mixed precision on GPUs: parameters all-gathered in bf16,
  gradients reduced in fp32; trainable weights stay fp32 in their shards.

Not supported, and why: QLoRA with fsdp. bitsandbytes stores the 4-bit base weights in its own
`Params4bit` tensors with a separate quantization state; FSDP2 shards parameters as DTensors and
cannot shard those (FSDP-QLoRA exists for FSDP1 with `bnb_4bit_quant_storage`, not for
`fully_shard`). QLoRA therefore scales out data-parallel: each GPU must hold the whole 4-bit model.

The training forward goes through the wrapped root (DDP's or FSDP's hooks must run) with a
`completion_labels` keyword that `install_loss_forward` adds to the causal LM: it returns the
summed completion loss (loss.py) instead of logits, so the output head and the fused
cross-entropy run inside the root's forward, where FSDP has the head's weight gathered. Without
that keyword the model's own forward runs (generation, the objective check).

Checkpoints and the final output use torch's distributed state-dict API: the trainable parameters
and the optimizer state, gathered as full tensors on rank 0's CPU (`full_state_dict`,
`cpu_offload`, `ignore_frozen_params`); rank 0 writes and reads them. A checkpoint is
the same files whatever the number of processes that wrote it. On resume rank 0 reads it and
sends it to every rank (fine for LoRA's few MB; a full fine-tune's state is 12 B per parameter on
every rank's host: sharded `torch.distributed.checkpoint` files are not implemented yet).
"""

from __future__ import annotations

import contextlib
import logging
import types
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from bigmodel_training.distributed import World, barrier
from bigmodel_training.errors import UnsupportedError

log = logging.getLogger(__name__)
SINGLE, DDP, FSDP = "single", "ddp", "fsdp"
QLORA_FSDP = (
    "method qlora cannot be sharded with fsdp: bitsandbytes keeps the 4-bit base weights in Params4bit tensors, "
    "which FSDP2 (fully_shard) cannot shard; QLoRA runs data-parallel (strategy ddp), each GPU holding the whole "
    "4-bit model. Use strategy ddp, or method lora with strategy fsdp for a model that does not fit on one GPU"
)


def resolve_strategy(configured: str, method: str, world: World) -> str:
    """single for one process; else the configured one (auto: fsdp for full fine-tuning, ddp otherwise)."""
    if not world.distributed:
        return SINGLE
    strategy = configured if configured != "auto" else (FSDP if method == "full" else DDP)
    if strategy == FSDP and method == "qlora":
        raise UnsupportedError(QLORA_FSDP)
    return strategy


def install_loss_forward(model: Any) -> None:
    """Let the causal LM return our summed completion loss when called with `completion_labels`."""
    from bigmodel_training.loss import completion_loss

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "_bigmodel_forward", None) is not None:
        return
    base._bigmodel_forward = base.forward

    def forward(self: Any, *args: Any, completion_labels: torch.Tensor | None = None, **kwargs: Any) -> Any:
        if completion_labels is None:
            return self._bigmodel_forward(*args, **kwargs)
        # use_cache=False matters: with a cache, transformers skips the packed-sequence detection
        # and packed examples would attend to each other.
        hidden = self.get_decoder()(
            input_ids=kwargs.get("input_ids", args[0] if args else None),
            position_ids=kwargs.get("position_ids"),
            attention_mask=kwargs.get("attention_mask"),
            use_cache=False,
        )[0]
        return completion_loss(hidden, completion_labels, self.get_output_embeddings(), self.config)

    base.forward = types.MethodType(forward, base)


@dataclass
class Parallel:
    """The prepared model and how it is spread over the processes."""

    model: Any  # the (PEFT-wrapped) causal LM; under fsdp its parameters are DTensor shards
    root: Any  # what the training forward calls: the DDP wrapper, or `model` itself
    strategy: str
    world: World

    def loss_sum(self, batch: Any, runtime: Any) -> torch.Tensor:
        """Summed completion loss of one micro-batch, through the root (autocast as configured)."""
        with runtime.autocast():
            result: torch.Tensor = self.root(
                input_ids=batch.input_ids,
                position_ids=batch.position_ids,
                attention_mask=batch.attention_mask,
                completion_labels=batch.labels,
            )
            return result

    def sync(self, last: bool) -> contextlib.AbstractContextManager[Any]:
        """DDP all-reduces gradients on the last micro-batch of a step only; FSDP reduce-scatters
        each one (keeping unsharded gradients across micro-batches would cost their memory)."""
        if self.strategy == DDP and not last:
            return self.root.no_sync()
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        """Generation calls the model's inner modules directly, around the FSDP root's hooks: gather
        the root's own parameters (embeddings, final norm, head) for it. A no-op otherwise."""
        if self.strategy != FSDP:
            yield
            return
        self.model.unshard()
        try:
            yield
        finally:
            self.model.reshard()

    # -- state dicts -----------------------------------------------------------------------

    def _options(self, *, save: bool) -> Any:
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        if save:
            return StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
        return StateDictOptions(full_state_dict=True, strict=False, ignore_frozen_params=True)

    def state_for_checkpoint(self, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
        """(trainable tensors, optimizer state), full and on the CPU, keyed by parameter name; only
        rank 0's are complete (the other ranks take part in the gather and get empty dicts)."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(self.model, optimizer, options=self._options(save=True))
        return {k: v.contiguous() for k, v in model_state.items() if isinstance(v, torch.Tensor)}, optim_state

    def load_checkpoint_state(
        self, tensors: dict[str, Any], optim_state: dict[str, Any], optimizer: torch.optim.Optimizer
    ) -> None:
        """Load a checkpoint's full tensors and optimizer state (every rank has them) into this rank's
        parameters, whole or sharded."""
        from torch.distributed.checkpoint.state_dict import set_state_dict

        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        missing = trainable - set(tensors)
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} trainable tensors, e.g. {sorted(missing)[0]}")
        set_state_dict(
            self.model,
            optimizer,
            model_state_dict=tensors,
            optim_state_dict=optim_state,
            options=self._options(save=False),
        )

    def full_state_for_output(self) -> dict[str, Any] | None:
        """The whole model's state dict on rank 0 (fsdp only: DDP's rank 0 holds it already)."""
        if self.strategy != FSDP:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(self.model, options=options)
        return state if self.world.main else None


def wrap(model: Any, strategy: str, world: World, runtime: Any) -> Parallel:
    """Wrap a prepared, loaded model for `strategy` (ddp, or single); fsdp models come from `load_sharded`."""
    install_loss_forward(model)
    if strategy == SINGLE:
        return Parallel(model, model, SINGLE, world)
    if strategy != DDP:
        raise ValueError(f"wrap() builds single or ddp models, not {strategy}")
    from torch.nn.parallel import DistributedDataParallel

    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    frozen += [n for n, _ in model.named_buffers()]
    # Only trainable parameters are broadcast at start and all-reduced: the frozen base is the same
    # file on every rank, and QLoRA's 4-bit Params4bit would not survive a broadcast anyway.
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen)
    cuda = runtime.device.type == "cuda"
    root = DistributedDataParallel(
        model,
        device_ids=[runtime.device.index] if cuda else None,
        find_unused_parameters=False,
        gradient_as_bucket_view=True,
    )
    log.info("ddp over %d processes (%s)", world.size, world.describe())
    return Parallel(model, root, DDP, world)


def load_sharded(model_dir: Any, method: Any, hp: Any, runtime: Any, world: World, probe: Any = None) -> Parallel:
    """Build the model on the meta device on every rank, shard it with FSDP2, and fill the shards
    from rank 0's copy of the weights (see the module docstring)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from bigmodel_training import modeling

    config = modeling.read_config(model_dir)
    with torch.device("meta"):
        model = modeling.model_from_config(config, hp, runtime)
    torch.manual_seed(hp.seed)
    model = modeling.prepare_model(model, method, hp, runtime, shards=world.size)
    install_loss_forward(model)
    mesh = init_device_mesh(runtime.device.type, (world.size,))
    policy = MixedPrecisionPolicy()
    if runtime.autocast_dtype is not None:
        policy = MixedPrecisionPolicy(param_dtype=runtime.autocast_dtype, reduce_dtype=torch.float32)
    decoder = modeling.model_parts(model)[0]
    for layer in getattr(decoder, "layers", []):
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    model.to_empty(device=runtime.device)

    state: dict[str, Any] = {}
    buffers: dict[str, torch.Tensor] = {}
    if world.main:  # the one copy of the weights on this host; the other ranks receive their shards
        real = modeling.load_model(model_dir, method, hp, modeling.host_runtime(runtime), probe=None, prepare=False)
        torch.manual_seed(hp.seed)
        real = modeling.prepare_model(real, method, hp, modeling.host_runtime(runtime), speedups=False)
        state = dict(real.state_dict())
        buffers = {n: b.detach() for n, b in real.named_buffers()}
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    del state
    import torch.distributed as dist

    for name, buffer in model.named_buffers():  # non-persistent buffers (rotary inv_freq) are no state dict's
        if world.main:
            buffer.copy_(buffers[name].to(buffer.device, buffer.dtype))
        dist.broadcast(buffer, src=0)
    barrier(world)
    parallel = Parallel(model, model, FSDP, world)
    if probe is not None:
        modeling.check_objective(model, probe, runtime, root=model)
    log.info("fsdp over %d processes (%s)", world.size, world.describe())
    return parallel
