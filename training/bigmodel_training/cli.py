"""Command line: `python -m bigmodel_training --config FILE` (the training Job's entrypoint),
`python -m bigmodel_training launch <torchrun arguments>` (several processes: launch.py) and
`python -m bigmodel_training validate FILE --format chat` (check a dataset on a laptop).

Exit codes and the termination message are described in `bigmodel_training.errors`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from bigmodel_training.errors import (
    EXIT_DATASET,
    EXIT_ERROR,
    EXIT_OK,
    REASON_ERROR,
    REASON_OUT_OF_MEMORY,
    ConfigError,
    TrainerError,
    TrainerOutOfMemoryError,
    write_termination_message,
)

log = logging.getLogger("bigmodel_training")
OOM_HINT = "lower hyperparameters.batch_size or max_seq_length, enable gradient_checkpointing, or use qlora"


def _train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bigmodel_training", description="Run one fine-tuning job.")
    parser.add_argument("--config", required=True, help="TrainerConfig as JSON or YAML")
    return parser


def _validate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bigmodel_training validate",
        description="Check a JSONL dataset; exit 3 with a report on defects.",
    )
    parser.add_argument("file", help="the JSONL file")
    parser.add_argument("--format", choices=["chat", "instruction", "completion"], default="chat")
    parser.add_argument("--max-seq-length", type=int, default=None, help="refuse longer examples (needs --tokenizer)")
    parser.add_argument("--tokenizer", default=None, help="a local tokenizer/model directory for the length check")
    parser.add_argument("--min-examples", type=int, default=1)
    parser.add_argument("--limit", type=int, default=50, help="defects shown (the rest are counted)")
    return parser


def validate_main(argv: Sequence[str]) -> int:
    """The `validate` subcommand."""
    from bigmodel_training.dataset import check_lengths, format_report, validate_file

    args = _validate_parser().parse_args(argv)
    result = validate_file(args.file, args.format, min_examples=args.min_examples)
    defects = list(result.defects)
    if args.max_seq_length is not None:
        if not args.tokenizer:
            print("--max-seq-length needs --tokenizer DIR", file=sys.stderr)
            return 2
        from bigmodel_training.modeling import load_tokenizer
        from bigmodel_training.render import Renderer

        renderer = Renderer(load_tokenizer(args.tokenizer))
        defects += check_lengths(result.examples, lambda e: len(renderer.tokenize(e)), args.max_seq_length)
    print(format_report(defects, limit=args.limit, examples=len(result.examples), lines=result.lines))
    return EXIT_DATASET if defects else EXIT_OK


def train_main(argv: Sequence[str]) -> int:
    """Train from a config file; on failure write the termination message and return its code."""
    args = _train_parser().parse_args(argv)
    try:
        from pydantic import ValidationError

        from bigmodel_training.config import TrainerConfig

        try:
            config = TrainerConfig.from_file(args.config)
        except (OSError, ValueError, ValidationError) as exc:
            raise ConfigError(f"invalid config {args.config}: {exc}") from exc
        from bigmodel_training.runner import run

        try:
            run(config)
        except MemoryError as exc:
            raise TrainerOutOfMemoryError(f"host out of memory: {exc}; {OOM_HINT}") from exc
        except Exception as exc:
            if type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError, without importing torch here
                raise TrainerOutOfMemoryError(f"{str(exc).splitlines()[0]}; {OOM_HINT}") from exc
            raise
    except TrainerError as exc:
        log.error("%s: %s", exc.reason, exc)
        write_termination_message(exc.reason, str(exc), exc.exit_code)
        return exc.exit_code
    except Exception as exc:
        log.exception("training failed")
        write_termination_message(REASON_ERROR, f"{type(exc).__name__}: {exc}", EXIT_ERROR)
        return EXIT_ERROR
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to `validate` or training."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if argv and argv[0] == "validate":
        return validate_main(argv[1:])
    if argv and argv[0] == "launch":
        from bigmodel_training.launch import main as launch_main

        return launch_main(argv[1:])
    if argv and argv[0] == "train":
        argv = argv[1:]
    return train_main(argv)


__all__ = ["REASON_OUT_OF_MEMORY", "main"]
