"""LoRA fine-tuning throughput on one GPU: our trainer against a naive HF Trainer + PEFT baseline
and a tuned TRL SFTTrainer.

    PYTHONPATH=training python tests/gpu/bench_lora.py --all --out $OUT      # every case, a table
    PYTHONPATH=training python tests/gpu/bench_lora.py --case 8b-ours --out $OUT
    PYTHONPATH=training python tests/gpu/bench_lora.py --all --smoke          # CPU, tiny model
    tests/gpu/run_training_bench.sh                                          # issue 20: 8B ours, TRL tuned, QLoRA

Models are random-initialised from LlamaConfigs shaped like Llama-3.1-8B and Llama-3.2-1B (no
download), created directly in bf16 on the GPU. LoRA r=16, alpha=32, dropout 0 on all linear layers
of the decoder. Data: synthetic chat examples of variable length (log-normal, median 512 tokens,
clipped to [32, 2048]); 20-60 % of each example is prompt, whose labels are -100.

- baseline: `transformers.Trainer` + `peft`, bf16 autocast, batch 8 examples padded to the longest
  in the batch, no packing, gradient checkpointing on (TRL's SFT defaults), sdpa attention.
- trl-tuned: TRL's `SFTTrainer` as its docs recommend for speed: packing with padding-free batches
  (position ids, no pad tokens), completion-only loss, Liger kernels (fused linear cross-entropy,
  RMSNorm, SwiGLU, RoPE) when `liger-kernel` is installed, no gradient checkpointing, bf16.
  Skipped (the result says why) when `trl` is not installed: the dev lock does not carry it.
- ours: `bigmodel_training.Trainer` with its default GPU recipe: best-fit packing into 2,048-token
  rows with a block-diagonal mask, fused LoRA adds, regional torch.compile, loss only on completion
  tokens through the chunked fused linear cross-entropy, fused AdamW, no gradient checkpointing
  when the rows fit.

Model FLOPs, counted per real (non-padding) token T and per example of length n:
    frozen-base LoRA:  4·N·T  +  6·N_lora·T  +  6·L·d·Σn²
N = weights of the decoder's linear layers plus the output head (the input embedding is a lookup,
no FLOPs); forward 2·N·T, backward 2·N·T for activation gradients only (frozen weights get no
weight gradient); LoRA weights train fully (6·N_lora·T); causal attention 2·n²·d per layer
forward, twice that backward. Padding, recomputation (gradient checkpointing) and the attention
outside each example's own block are not counted.

MFU is reported twice, the honest figure first: `mfu` = useful FLOP/s / the GPU's datasheet dense
bf16 peak (989.4 TFLOP/s for H100 and H200 SXM, from the operator's GPU table), then
`mfu_measured_matmul` = useful FLOP/s / the rate of a large bf16 matmul measured in the same run
(798 TFLOP/s on the H100 of docs/benchmarks.md), which says how close to what this GPU actually
delivers at its clocks and power limit the training gets, but flatters the result.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WARMUP_STEPS = 3
FALLBACK_DATASHEET_TFLOPS = 989.4  # H100/H200 SXM dense bf16, when the GPU is not in the operator's table

_LLAMA = {"num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256}
SHAPES: dict[str, dict[str, Any]] = {
    "8b": {**_LLAMA, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
           "tie_word_embeddings": False},
    "1b": {**_LLAMA, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
           "tie_word_embeddings": True},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 512, "tie_word_embeddings": False},
}  # fmt: skip

# case → (shape, mode, options). Batch = examples (baseline) or 2,048-token rows (ours).
# "ours" is the trainer's default GPU recipe (attention auto = flex_attention, compile on); the
# -sdpa / -eager cases are ablations.
CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "8b-ours": ("8b", "ours", {"batch": 4}),
    "8b-baseline": ("8b", "baseline", {"batch": 8}),
    "1b-ours": ("1b", "ours", {"batch": 8}),
    "1b-baseline": ("1b", "baseline", {"batch": 8}),
    "8b-ours-sdpa": ("8b", "ours", {"batch": 4, "attention": "sdpa"}),
    "8b-ours-sdpa-eager": ("8b", "ours", {"batch": 4, "attention": "sdpa", "compile": False}),
    "1b-ours-sdpa": ("1b", "ours", {"batch": 8, "attention": "sdpa"}),
    "8b-trl-tuned": ("8b", "trl", {"batch": 4}),
    "8b-qlora": ("8b", "ours", {"batch": 4, "method": "qlora"}),
    "1b-trl-tuned": ("1b", "trl", {"batch": 8}),
}
CASE_TIMEOUT_S = 300


def llama_config(shape: str, attention: str) -> Any:
    from transformers import LlamaConfig

    config = LlamaConfig(
        **SHAPES[shape], max_position_embeddings=131072, rms_norm_eps=1e-5,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    config._attn_implementation = attention
    return config


def synthetic_examples(n: int, vocab: int, max_len: int, seed: int = 0) -> list[Any]:
    """Variable-length chat-like examples: token ids plus labels with the prompt masked."""
    import random

    from bigmodel_training.render import IGNORE_INDEX, Tokenized

    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        length = int(min(max_len, max(32, rng.lognormvariate(math.log(512), 0.6))))
        prompt = int(length * rng.uniform(0.2, 0.6))
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        labels = [IGNORE_INDEX] * prompt + ids[prompt:]
        labels[0] = IGNORE_INDEX
        examples.append(Tokenized(ids, labels))
    return examples


def model_flops(model: Any, lengths: list[int]) -> float:
    """Useful FLOPs to train on examples of these lengths once (see the module docstring)."""
    import torch

    config = model.config if not hasattr(model, "get_base_model") else model.get_base_model().config
    frozen = lora = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            n = module.in_features * module.out_features  # not weight.numel(): 4-bit weights are packed
            if "lora_" in name:
                lora += n
            elif module.weight.requires_grad:
                raise ValueError("benchmark counts a frozen base only")
            else:
                frozen += n
    tokens = sum(lengths)
    attention = 6 * config.num_hidden_layers * config.hidden_size * sum(n * n for n in lengths)
    return 4.0 * frozen * tokens + 6.0 * lora * tokens + attention


def build_model(shape: str, attention: str, device: str) -> Any:
    import torch
    from transformers import LlamaForCausalLM

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(llama_config(shape, attention), dtype=dtype)
    model.config.use_cache = False
    return model


def run_ours(shape: str, options: dict[str, Any], steps: int, device: str) -> dict[str, Any]:
    import importlib.util

    import torch

    from bigmodel_training.config import TrainerConfig
    from bigmodel_training.data import PreparedData
    from bigmodel_training.modeling import attention_implementation, prepare_model, select_runtime
    from bigmodel_training.trainer import Trainer

    method = options.get("method", "lora")
    if method == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        return {"skipped": "bitsandbytes not installed (pip install bitsandbytes)"}
    config = TrainerConfig.model_validate({
        "base_model": {"uri": "file:///dev/null"}, "dataset": {"uri": "file:///dev/null"},
        "output": {"uri": "file:///tmp/bench"},
        "method": {"type": method, "rank": 16, "alpha": 32, "dropout": options.get("dropout", 0.0)},
        "hyperparameters": {
            "batch_size": options["batch"], "gradient_accumulation_steps": options.get("accumulation", 1),
            "max_steps": steps + WARMUP_STEPS, "max_seq_length": 2048, "packing": True, "warmup_ratio": 0.0,
            "gradient_checkpointing": options.get("gradient_checkpointing"),  # default: auto (off when it fits)
            "attention": options.get("attention", "auto"), "torch_compile": options.get("compile", device == "cuda"),
        },
        "checkpoint": {"every_steps": 10**9},
    })  # fmt: skip
    hp = config.hyperparameters
    runtime = select_runtime(config.method)
    if method == "qlora":  # bitsandbytes quantizes while loading: write the random model, load it in 4 bits
        from bigmodel_training.modeling import load_model

        scratch = tempfile.mkdtemp(prefix="bench-qlora-")
        build_model(shape, "sdpa", device).save_pretrained(scratch, safe_serialization=True)
        torch.cuda.empty_cache()
        model = load_model(scratch, config.method, hp, runtime)
    else:
        model = build_model(shape, attention_implementation(hp, runtime) or "sdpa", device)
        model = prepare_model(model, config.method, hp, runtime)
    examples = synthetic_examples(4000, SHAPES[shape]["vocab_size"], 2048)
    with tempfile.TemporaryDirectory() as out:
        marks: list[tuple[float, int]] = []
        trainer: Any = None

        def on_step(step: int) -> None:
            if device == "cuda":
                torch.cuda.synchronize()
            marks.append((time.perf_counter(), trainer.tokens))

        trainer = Trainer(
            model=model, data=PreparedData(examples, []), config=config, runtime=runtime,
            output_dir=Path(out), pad_id=0, on_step=on_step,
        )  # fmt: skip
        trainer.train()
        # The examples the measured steps consumed (the plan is deterministic).
        planned = [s for epoch, n in trainer.plan for s in trainer._steps(epoch)[:n]]
    measured = planned[WARMUP_STEPS : WARMUP_STEPS + steps]
    lengths = [len(examples[i]) for step in measured for micro in step for row in micro for i in row]
    return _result(model, marks, lengths, device)


def run_baseline(shape: str, options: dict[str, Any], steps: int, device: str) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model = build_model(shape, "sdpa", device)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"))
    examples = synthetic_examples(4000, SHAPES[shape]["vocab_size"], 2048)
    dataset = [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]
    batches: list[list[int]] = []

    def collate(items: list[dict[str, list[int]]]) -> dict[str, Any]:
        width = max(len(x["input_ids"]) for x in items)
        batches.append([len(x["input_ids"]) for x in items])
        pad = lambda seq, value: seq + [value] * (width - len(seq))  # noqa: E731
        return {
            "input_ids": torch.tensor([pad(x["input_ids"], 0) for x in items]),
            "labels": torch.tensor([pad(x["labels"], -100) for x in items]),
            "attention_mask": torch.tensor([pad([1] * len(x["input_ids"]), 0) for x in items]),
        }

    marks: list[tuple[float, int]] = []

    class Timer(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if device == "cuda":
                torch.cuda.synchronize()
            marks.append((time.perf_counter(), sum(sum(b) for b in batches[: state.global_step])))

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=options["batch"], max_steps=steps + WARMUP_STEPS,
            learning_rate=2e-4, bf16=device == "cuda", gradient_checkpointing=True, logging_strategy="no",
            save_strategy="no", report_to="none", disable_tqdm=True, remove_unused_columns=False,
            dataloader_num_workers=0, use_cpu=device == "cpu",
        )  # fmt: skip
        Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate, callbacks=[Timer()]).train()
    lengths = [n for b in batches[WARMUP_STEPS : WARMUP_STEPS + steps] for n in b]
    return _result(model, marks, lengths, device)


def run_trl(shape: str, options: dict[str, Any], steps: int, device: str) -> dict[str, Any]:
    """A tuned TRL SFTTrainer (see the module docstring) on the same examples and model."""
    import importlib.util

    missing = [name for name in ("trl", "datasets") if importlib.util.find_spec(name) is None]
    if missing:
        return {"skipped": f"{' and '.join(missing)} not installed (pip install trl datasets liger-kernel)"}
    import torch
    from datasets import Dataset  # type: ignore[import-not-found, unused-ignore]
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer  # type: ignore[import-not-found, unused-ignore]

    liger = importlib.util.find_spec("liger_kernel") is not None and device == "cuda"
    model = build_model(shape, "flash_attention_2" if _has_flash_attention() else "sdpa", device)
    examples = synthetic_examples(4000, SHAPES[shape]["vocab_size"], 2048)
    rows = {
        "input_ids": [e.input_ids for e in examples],
        "completion_mask": [[0 if y == -100 else 1 for y in e.labels] for e in examples],
    }
    marks: list[tuple[float, int]] = []

    class Timer(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if device == "cuda":
                torch.cuda.synchronize()
            marks.append((time.perf_counter(), 0))

    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out, per_device_train_batch_size=options["batch"], max_steps=steps + WARMUP_STEPS,
            learning_rate=2e-4, bf16=device == "cuda", gradient_checkpointing=False, packing=True,
            padding_free=True, max_length=2048, completion_only_loss=True, use_liger_kernel=liger,
            logging_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=device == "cpu",
        )  # fmt: skip
        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=Dataset.from_dict(rows), peft_config=lora, callbacks=[Timer()]
        )
        trainer.train()
        # Padding-free packing fills rows of max_length tokens, so a measured step holds about
        # batch × 2,048 real tokens; the example lengths (for the attention FLOPs) are taken in
        # dataset order after the warm-up steps' share (approximate: TRL reorders while packing).
        per_step = options["batch"] * 2048
        skip, budget, lengths = per_step * WARMUP_STEPS, per_step * steps, []
        for e in examples:
            if skip > 0:
                skip -= len(e)
                continue
            if budget <= 0:
                break
            lengths.append(min(len(e), budget))
            budget -= len(e)
        result = _result(trainer.model, marks, lengths, device)
    return {**result, "liger": liger}


def _has_flash_attention() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def datasheet_tflops(device: str) -> float | None:
    """Dense bf16 peak of this GPU from the operator's GPU table (989.4 for H100/H200 SXM)."""
    if device != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name().replace(" ", "-")
    try:
        from bigmodel_operator.planning.gpus import GPU_PRODUCTS
    except ImportError:
        return FALLBACK_DATASHEET_TFLOPS
    product = GPU_PRODUCTS.get(name) or next((g for p, g in GPU_PRODUCTS.items() if name.startswith(p)), None)
    return product.bf16_tflops if product and product.bf16_tflops else FALLBACK_DATASHEET_TFLOPS


def measured_matmul_tflops(device: str, size: int = 8192, repeats: int = 50) -> float | None:
    """The bf16 rate of a large square matmul on this GPU, now (clocks and power limit included)."""
    if device != "cuda":
        return None
    import torch

    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e12


def _result(model: Any, marks: list[tuple[float, int]], lengths: list[int], device: str) -> dict[str, Any]:
    import torch

    (t0, k0), (t1, k1) = marks[WARMUP_STEPS - 1], marks[-1]
    seconds = t1 - t0
    flops = model_flops(model, lengths)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    datasheet, measured = datasheet_tflops(device), measured_matmul_tflops(device)
    return {
        "steps": len(marks) - WARMUP_STEPS,
        "seconds": round(seconds, 3),
        "tokens": sum(lengths),
        "tokens_counted_by_trainer": k1 - k0,
        "tokens_per_second": round(sum(lengths) / seconds, 1),
        "tflops": round(flops / seconds / 1e12, 1),
        "mfu": None if datasheet is None else round(flops / seconds / (datasheet * 1e12), 4),
        "datasheet_tflops": datasheet,
        "mfu_measured_matmul": None if measured is None else round(flops / seconds / (measured * 1e12), 4),
        "measured_matmul_tflops": None if measured is None else round(measured, 1),
        "peak_memory_gib": None if peak is None else round(peak, 2),
        "gpu": torch.cuda.get_device_name() if device == "cuda" else "cpu",
    }


def run_case(name: str, steps: int, device: str, batch: int | None = None) -> dict[str, Any]:
    shape, mode, options = CASES[name]
    if batch is not None and batch != options["batch"]:  # an OOM retry: same tokens per optimizer step
        options = {**options, "accumulation": options["batch"] // batch, "batch": batch}
    if device == "cpu":
        shape = "tiny"
    runner = {"ours": run_ours, "baseline": run_baseline, "trl": run_trl}[mode]
    result = runner(shape, options, steps, device)
    return {"case": name, "shape": shape, "mode": mode, "options": options, **result}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    parser.add_argument("--all", action="store_true")
    parser.add_argument("--steps", type=int, default=10, help="measured steps (after 3 warm-up steps)")
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU")
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    parser.add_argument("--json", help="(internal) write one case's result here")
    parser.add_argument("--batch", type=int, help="(internal) override the case's micro-batch")
    args = parser.parse_args()
    device = "cpu" if args.smoke else "cuda"
    if args.json:  # child process: exactly one case
        result = run_case(args.case[0], args.steps, device, args.batch)
        Path(args.json).write_text(json.dumps(result))
        return 0
    names = list(CASES) if args.all else (args.case or [])
    if not args.smoke:
        import torch
        import transformers

        print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.cuda.get_device_name()}")
    results = []
    queue = [(name, CASES[name][2]["batch"]) for name in names]
    while queue:
        name, batch = queue.pop(0)
        target = Path(args.out) / f"bench-{name}.json"
        command = [sys.executable, __file__, "--case", name, "--steps", str(args.steps), "--json", str(target)]
        command += ["--batch", str(batch)]
        started = time.time()
        try:
            proc = subprocess.run(
                [*command, *(["--smoke"] if args.smoke else [])],
                capture_output=True, text=True, check=False, timeout=CASE_TIMEOUT_S,
            )  # fmt: skip
            output, code = proc.stdout + proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as exc:
            partial = (exc.stdout or b"") + (exc.stderr or b"")
            text = partial.decode("utf-8", "replace") if isinstance(partial, bytes) else str(partial)
            output, code = f"{text} TIMEOUT", -1
        if code != 0 and "OutOfMemoryError" in str(output) and batch > 1 and CASES[name][1] == "ours":
            print(f"{name}: out of memory with micro-batch {batch}; retrying with {batch // 2}", flush=True)
            queue.insert(0, (name, batch // 2))
            continue
        if code != 0 or not target.is_file():
            (Path(args.out) / f"bench-{name}.log").write_text(str(output)[-200_000:])
            tail = str(output)[-3000:]
            print(f"{name}: FAILED ({code}) after {time.time() - started:.0f}s\n{tail}", flush=True)
            results.append({"case": name, "error": tail[-500:]})
            continue
        result = json.loads(target.read_text())
        result["process_seconds"] = round(time.time() - started, 1)
        results.append(result)
        print(json.dumps(result), flush=True)
    (Path(args.out) / "bench.json").write_text(json.dumps(results, indent=1))
    print(f"\n{'case':16} {'tok/s':>9} {'TFLOP/s':>8} {'MFU':>6} {'MFU(mm)':>8} {'peak GiB':>9} {'s/run':>6}")
    for r in results:
        if "error" in r or "skipped" in r:
            print(f"{r['case']:16} {'failed' if 'error' in r else 'skipped: ' + r['skipped']}")
            continue
        mfu = f"{100 * r['mfu']:5.1f}%" if r.get("mfu") is not None else "   n/a"
        mm = f"{100 * r['mfu_measured_matmul']:6.1f}%" if r.get("mfu_measured_matmul") is not None else "     n/a"
        print(
            f"{r['case']:16} {r['tokens_per_second']:9.0f} {r['tflops']:8.1f} {mfu} {mm} "
            f"{r['peak_memory_gib'] or 0:9.1f} {r['process_seconds']:6.0f}"
        )
    by_case: dict[str, dict[str, Any]] = {r["case"]: r for r in results if "tokens_per_second" in r}
    for size in ("8b", "1b"):
        ours, trl = by_case.get(f"{size}-ours"), by_case.get(f"{size}-trl-tuned")
        if ours and trl:
            ratio = float(ours["tokens_per_second"]) / float(trl["tokens_per_second"])
            print(f"{size}: ours / tuned TRL = {ratio:.2f}x tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
