"""A tiny, random, Llama-architecture model generated offline, for tests, benchmarks and demos.

Nothing here downloads anything. `make_tiny_model()` writes a directory that loads through the
real code paths (`AutoModelForCausalLM.from_pretrained(dir)`, `AutoTokenizer.from_pretrained(dir)`,
`tokenizer.apply_chat_template(...)`), with:

- a Llama config and random weights (seeded, so the bytes are the same on every run), with a head
  size of 64 (vLLM's CPU attention has kernels for 32, 64, 80, 96, 112, 128, 256 — not for 16),
- a byte-level BPE tokenizer trained locally on a small built-in English corpus,
- bos/eos/pad special tokens and a simple chat template.

`make_tiny_lora_adapter()` writes a peft LoRA adapter for that model whose B matrices are non-zero,
so that enabling it really changes the model's outputs.

Both are idempotent: a marker file is written last, and a complete directory is reused as is.
Heavy libraries (torch, transformers, tokenizers, peft) are imported inside the functions.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

DEFAULT_CACHE_DIR = Path(os.environ.get("BIGMODEL_CACHE", Path.home() / ".cache" / "bigmodel")) / "models"
TINY_MODEL_NAME = "tiny-llama-v2"
MARKER_FILE = ".bigmodel-complete"
# Bumped when the generated files change; a directory written by an older version is rewritten.
FORMAT_VERSION = 2

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"

# A jinja chat template in the usual Hugging Face form: one line per message, then the assistant cue.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CHAT_ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]

_CORPUS = """
The quick brown fox jumps over the lazy dog. A large language model predicts the next token.
Hello! How are you today? I am fine, thank you. What is the weather like in the city?
The operator watches resources in the cluster and reconciles the desired state with the actual state.
Serving a model means loading its weights, reading requests, and streaming tokens back to the client.
Fine-tuning adapts a model to a task with a small dataset; LoRA trains low-rank matrices only.
Please write a short poem about the sea. The sea is blue, the sky is wide, the ship sails on the tide.
One, two, three, four, five, six, seven, eight, nine, ten. Numbers like 42 and 2048 appear in text.
Question: what is the capital of France? Answer: Paris is the capital of France.
Users send chat messages with roles: system, user and assistant. The assistant answers politely.
Good morning, good evening, good night. Thanks for your help; see you soon.
Data, models, tokens, prompts, completions, adapters, replicas, queues, latency and throughput.
"""


def tiny_model_dir(cache_dir: Path | None = None) -> Path:
    """Where the default tiny model lives: `<cache_dir or ~/.cache/bigmodel/models>/tiny-llama-v2`."""
    return (cache_dir or DEFAULT_CACHE_DIR) / TINY_MODEL_NAME


def is_complete(directory: Path) -> bool:
    """True when `directory` holds a finished tiny model or adapter of the current format."""
    try:
        marker = json.loads((directory / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("format") == FORMAT_VERSION


def make_tiny_model(
    out_dir: Path | None = None,
    *,
    seed: int = 0,
    vocab_size: int = 768,
    hidden_size: int = 128,
    layers: int = 2,
    heads: int = 2,
    kv_heads: int = 1,
    max_position_embeddings: int = 2048,
) -> Path:
    """Write a tiny random Llama model with a locally trained tokenizer into `out_dir`; return it.

    `out_dir` defaults to `tiny_model_dir()`. When the directory is already complete it is returned
    untouched. The model is written to a temporary sibling directory and renamed into place, so an
    interrupted run never leaves a half-written model behind.
    """
    target = Path(out_dir) if out_dir is not None else tiny_model_dir()
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        tokenizer = _train_tokenizer(vocab_size)
        _save_random_llama(
            staging,
            seed=seed,
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            layers=layers,
            heads=heads,
            kv_heads=kv_heads,
            max_position_embeddings=max_position_embeddings,
            tokenizer=tokenizer,
        )
        tokenizer.save_pretrained(staging)
        _write_marker(staging, {"kind": "model", "seed": seed})
        _move_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def make_tiny_lora_adapter(
    base_model_dir: Path,
    out_dir: Path,
    *,
    seed: int = 1,
    rank: int = 4,
    init_scale: float = 0.5,
) -> Path:
    """Write a peft LoRA adapter for the tiny model at `base_model_dir` into `out_dir`; return it.

    LoRA's B matrices normally start at zero (the adapter is then a no-op); here they are filled
    with seeded random values of size `init_scale`, so that the adapted model answers differently.
    """
    target = Path(out_dir)
    if is_complete(target):
        return target
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        base = AutoModelForCausalLM.from_pretrained(base_model_dir)
        config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
        with warnings.catch_warnings():
            # peft 0.21 probes a transformers attribute that transformers 5 deprecates.
            warnings.simplefilter("ignore", FutureWarning)
            peft_model = get_peft_model(base, config)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_B" in name or "lora_A" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * init_scale)
        peft_model.save_pretrained(str(staging))
        _write_marker(staging, {"kind": "lora-adapter", "seed": seed, "rank": rank})
        _move_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _train_tokenizer(vocab_size: int) -> Any:
    """Train a byte-level BPE tokenizer on the built-in corpus and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special_tokens = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, *CHAT_ROLE_TOKENS]
    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in _CORPUS.strip().splitlines() if line]
    backend.train_from_iterator(lines * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=CHAT_ROLE_TOKENS,
        model_max_length=2048,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _save_random_llama(
    directory: Path,
    *,
    seed: int,
    vocab_size: int,
    hidden_size: int,
    layers: int,
    heads: int,
    kv_heads: int,
    max_position_embeddings: int,
    tokenizer: Any,
) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(directory)


def _write_marker(directory: Path, content: dict[str, object]) -> None:
    marker = {**content, "format": FORMAT_VERSION}
    (directory / MARKER_FILE).write_text(json.dumps(marker, sort_keys=True) + "\n")


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename the finished staging dir to `target`; if another process won the race, keep theirs."""
    if target.exists():
        if is_complete(target):
            return
        shutil.rmtree(target)
    try:
        staging.rename(target)
    except OSError:
        if not is_complete(target):
            raise


if __name__ == "__main__":  # python -m bigmodel_training.tinymodel [DIR]: write (or reuse) it, print the path
    import sys

    print(make_tiny_model(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
