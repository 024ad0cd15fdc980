"""Loading the base model and preparing it for LoRA, QLoRA or full fine-tuning.

Precision: on a CUDA GPU with bf16 support, frozen weights are stored in bf16 and the forward and
backward passes run under bf16 autocast, while every *trained* parameter (LoRA matrices, or all
weights for full fine-tuning) is kept in fp32 so that small AdamW updates are not rounded away.
Without bf16 support, and on the CPU, everything is fp32.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from bigmodel_training.config import ALL_LINEAR, Hyperparameters, MethodConfig
from bigmodel_training.errors import SourceError, UnsupportedError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """Where and in which precision the run computes."""

    device: torch.device
    weight_dtype: torch.dtype  # dtype of the frozen base weights
    autocast_dtype: torch.dtype | None  # None: no autocast (fp32 everywhere)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The autocast context for forward passes (a no-op without mixed precision)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def describe(self) -> str:
        """E.g. 'cuda:0 bf16' or 'cpu fp32'."""
        name = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
        return f"{self.device} {name.get(self.autocast_dtype or self.weight_dtype, str(self.weight_dtype))}"


def select_runtime(method: MethodConfig) -> Runtime:
    """bf16 on GPUs that support it, fp32 otherwise; QLoRA refuses to run without CUDA."""
    if not torch.cuda.is_available():
        if method.type == "qlora":
            raise UnsupportedError(
                "method qlora loads the base model in 4 bits with bitsandbytes, which needs a CUDA GPU; "
                "this machine has none. Use method.type: lora (or full) on the CPU, or request a GPU."
            )
        return Runtime(torch.device("cpu"), torch.float32, None)
    device = torch.device("cuda", torch.cuda.current_device())
    if torch.cuda.is_bf16_supported():
        weights = torch.float32 if method.type == "full" else torch.bfloat16
        return Runtime(device, weights, torch.bfloat16)
    return Runtime(device, torch.float32, None)


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer of the base model, with a pad token (EOS if it has none)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot load the tokenizer from {path}: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def attention_implementation(hp: Hyperparameters, runtime: Runtime) -> str | None:
    """The `attn_implementation` to load the model with (None: transformers' default).

    auto: flex_attention on CUDA (its block mask skips the tiles between packed examples: 53 % vs
    44 % MFU for sdpa with a dense block-diagonal mask on an 8B model, docs/benchmarks.md); on the
    CPU transformers' default, which is sdpa, or eager for families whose attention sdpa cannot
    express (Gemma-2's soft-capped scores); flex_attention has no CPU backward pass.
    """
    if hp.attention != "auto":
        return hp.attention
    return "flex_attention" if runtime.device.type == "cuda" else None


# Layer kinds that take the block-diagonal mask of packed examples; anything else (linear attention,
# Mamba/SSM mixers, recurrent blocks) carries state from one token to the next, across examples.
ATTENTION_LAYER_TYPES = {"full_attention", "sliding_attention", "chunked_attention", "attention", "global", "local"}
_RECURRENT_WORDS = re.compile(r"mamba|hybrid|linear|rwkv|xlstm|recurrent|ssm|deltanet", re.IGNORECASE)


def family_problem(config: Any) -> str | None:
    """Why this model family cannot be trained correctly with packed batches, or None.

    The operator refuses the same families at plan time (reason UnsupportedModelFamily); this is
    the trainer's own check, for configs the operator could not read.
    """
    configs = [config, getattr(config, "text_config", None)]
    for cfg in (c for c in configs if c is not None):
        layer_types = getattr(cfg, "layer_types", None)
        other = sorted({str(t) for t in layer_types or []} - ATTENTION_LAYER_TYPES)
        names = [str(getattr(cfg, "model_type", "") or ""), *(getattr(cfg, "architectures", None) or [])]
        if other or any(_RECURRENT_WORDS.search(name) for name in names):
            what = (
                f"layers of type {', '.join(other)}" if other else "recurrent (linear-attention or state-space) layers"
            )
            return (
                f"{names[0] or 'this model'} has {what}: their state would carry from one packed example into the "
                "next, so the trainer does not support this family"
            )
    return None


def read_config(path: str | Path) -> Any:
    """The base model's config; refuses families the trainer cannot train (recurrent layers)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot read the base model's config from {path}: {exc}") from exc
    problem = family_problem(config)
    if problem:
        raise UnsupportedError(problem)
    return config


def _model_kwargs(hp: Hyperparameters, runtime: Runtime) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"dtype": runtime.weight_dtype}
    attention = attention_implementation(hp, runtime)
    if attention is not None:
        kwargs["attn_implementation"] = attention
    return kwargs


def model_from_config(config: Any, hp: Hyperparameters, runtime: Runtime) -> Any:
    """The model's architecture without weights (call under `torch.device("meta")` to allocate nothing)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(config, **_model_kwargs(hp, runtime))


def host_runtime(runtime: Runtime) -> Runtime:
    """The same weight precision on the host CPU (where rank 0 reads the weights for FSDP)."""
    return Runtime(torch.device("cpu"), runtime.weight_dtype, None)


def load_model(
    path: str | Path,
    method: MethodConfig,
    hp: Hyperparameters,
    runtime: Runtime,
    probe: Any = None,
    *,
    prepare: bool = True,
) -> Any:
    """Load the base model with `from_pretrained`, check its objective on `probe` (a tokenized
    example), then `prepare_model` it (unless `prepare` is False)."""
    from transformers import AutoModelForCausalLM

    read_config(path)
    kwargs = _model_kwargs(hp, runtime)
    if method.type == "qlora":
        kwargs.update(_qlora_kwargs(runtime))
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot load the base model from {path}: {exc}") from exc
    if method.type != "qlora":
        model.to(runtime.device)
    if probe is not None:
        check_objective(model, probe, runtime)
    return prepare_model(model, method, hp, runtime) if prepare else model


PROBE_TOKENS = 512


def check_objective(model: Any, probe: Any, runtime: Runtime, root: Any = None) -> None:
    """Refuse a model whose own `forward(labels=...)` loss differs from ours on one example: its
    logits go through a transform `loss.LogitTransform` does not know, and training would optimise
    another objective. fp32 agrees to ~1e-6; bf16 autocast to ~1e-3 (tolerances 1e-3 and 2e-2).
    `root`: a sharded model, whose forward must run through its own hooks (data_parallel.py)."""
    from bigmodel_training.loss import objective_gap, objective_gap_via

    ids, labels = list(probe.input_ids[-PROBE_TOKENS:]), list(probe.labels[-PROBE_TOKENS:])
    with runtime.autocast():
        if root is None:
            ours, reference = objective_gap(model, ids, labels)
        else:
            ours, reference = objective_gap_via(root, ids, labels, runtime.device)
    tolerance = 1e-3 if runtime.autocast_dtype is None else 2e-2
    log.info("objective check: our loss %.6f, the model's own %.6f", ours, reference)
    if not abs(ours - reference) <= tolerance * max(1.0, abs(reference)):
        family = getattr(model.config, "model_type", "this model")
        raise UnsupportedError(
            f"{family}: the trainer's loss ({ours:.4f}) differs from the model's own forward loss ({reference:.4f}) "
            "on the first example; its logits are transformed in a way the trainer does not reproduce, so this "
            "family is not supported"
        )


def activation_bytes(config: Any, tokens: int) -> int:
    """Activation memory of one micro-batch without checkpointing, per the decoder's shape.

    2 bytes (bf16) × (10 × hidden + 4 × intermediate) per token and layer: calibrated on the 8B
    benchmark (measured ≈157 KiB per token and layer with compiled layers; this gives 192 KiB).
    """
    hidden = int(config.hidden_size)
    intermediate = int(getattr(config, "intermediate_size", 4 * hidden))
    return 2 * (10 * hidden + 4 * intermediate) * int(config.num_hidden_layers) * tokens


def use_checkpointing(model: Any, method: MethodConfig, hp: Hyperparameters, runtime: Runtime, shards: int = 1) -> bool:
    """The explicit setting, else: on when a full micro-batch's activations would not fit on the GPU
    (`shards`: the processes FSDP spreads the weights and optimizer state over)."""
    if hp.gradient_checkpointing is not None:
        return hp.gradient_checkpointing
    if runtime.device.type != "cuda":
        return False
    need = activation_bytes(model.config, hp.batch_size * hp.max_seq_length)
    if method.type == "full":  # fp32 gradients and two AdamW moments, allocated after loading
        need += 12 * sum(p.numel() for p in model.parameters()) // shards
    free, _ = torch.cuda.mem_get_info(runtime.device)
    enable = need > 0.85 * free - 2 * 2**30
    log.info("gradient checkpointing %s: ~%.1f GiB activations, %.1f GiB free", enable, need / 2**30, free / 2**30)
    return enable


def prepare_model(
    model: Any,
    method: MethodConfig,
    hp: Hyperparameters,
    runtime: Runtime,
    *,
    shards: int = 1,
    speedups: bool = True,
) -> Any:
    """Make the right parameters trainable (LoRA adapters, or everything) and apply speed-ups
    (`speedups=False`: only the trainable parameters, for a copy that is read, never trained)."""
    from bigmodel_training.speed import compile_layers, fuse_lora_adds

    model.config.use_cache = False
    checkpointing = speedups and use_checkpointing(model, method, hp, runtime, shards)
    if method.type == "full":
        model.requires_grad_(True)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model = _add_lora(model, method, checkpointing, runtime)
        if speedups:
            fuse_lora_adds(model)
    use_compile = hp.torch_compile if hp.torch_compile is not None else runtime.device.type == "cuda"
    if use_compile and speedups:
        compile_layers(model_parts(model)[0])
    return model


def _qlora_kwargs(runtime: Runtime) -> dict[str, Any]:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise UnsupportedError("method qlora needs the bitsandbytes package in the trainer image") from exc
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=runtime.autocast_dtype or torch.float32,
    )
    return {"quantization_config": quantization, "device_map": {"": runtime.device.index or 0}}


def _add_lora(model: Any, method: MethodConfig, checkpointing_on: bool, runtime: Runtime) -> Any:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    checkpointing = {"use_reentrant": False}
    if method.type == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=checkpointing_on, gradient_checkpointing_kwargs=checkpointing
        )
    elif checkpointing_on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
    targets: str | list[str] = ALL_LINEAR if method.target_modules == [ALL_LINEAR] else list(method.target_modules)
    lora = LoraConfig(
        r=method.rank,
        lora_alpha=cast(int, method.lora_alpha),  # peft annotates int; a float alpha works the same
        lora_dropout=method.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft probing deprecated transformers attributes
        model = get_peft_model(model, lora)  # LoRA weights are created in fp32
    if runtime.autocast_dtype is not None:
        # Under autocast the LoRA matmuls run in bf16 anyway; peft's own cast of every input to the
        # fp32 adapter dtype would only copy activations (and keep fp32 copies for backward).
        for module in model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = False
    return model


def model_parts(model: Any) -> tuple[torch.nn.Module, torch.nn.Module, Any]:
    """(decoder stack, output head, config) of a causal LM, PEFT-wrapped or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings(), base.config


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Name → parameter for every parameter that trains."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def save_final(
    model: Any,
    tokenizer: Any,
    directory: Path,
    method: MethodConfig,
    base_uri: str,
    state_dict: dict[str, Any] | None = None,
) -> None:
    """PEFT layout (adapter_config.json + adapter_model.safetensors) or a full HF model directory.
    `state_dict`: the gathered weights of a sharded (FSDP) model, whose own tensors are shards."""
    directory.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {"state_dict": state_dict} if state_dict is not None else {}
    if method.type == "full":
        model.save_pretrained(directory, safe_serialization=True, **extra)
        tokenizer.save_pretrained(directory)
        return
    # Base weights never change under LoRA, so never copy embeddings into the adapter (peft would,
    # with a warning, when lm_head is among the targets).
    model.save_pretrained(directory, safe_serialization=True, save_embedding_layers=False, **extra)
    # Name the base model the way a server finds it (hub id, or the URI as given), not the local
    # path it happened to be mounted at in the training pod.
    config_file = directory / "adapter_config.json"
    adapter_config = json.loads(config_file.read_text())
    adapter_config["base_model_name_or_path"] = base_uri.removeprefix("hf://")
    config_file.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
