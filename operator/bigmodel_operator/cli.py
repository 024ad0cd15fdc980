"""The `bigmodel` command line: CRDs, the operator, offline plans, and local serving."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bigmodel_operator import __version__


def _cmd_version(_: argparse.Namespace) -> int:
    print(f"bigmodel-operator {__version__}")
    return 0


def _cmd_crds(args: argparse.Namespace) -> int:
    from bigmodel_operator import apidocs, crdgen

    docs = Path(args.docs) if args.docs else None
    if args.check:
        drift = crdgen.check(Path(args.check))
        if docs and (not docs.exists() or docs.read_text() != apidocs.render()):
            drift.append(f"differs from the API: {docs}")
        for line in drift:
            print(line, file=sys.stderr)
        if drift:
            print("CRDs are out of date: run `make crds` and commit the result.", file=sys.stderr)
            return 1
        print(f"CRDs in {args.check} match the API.")
        return 0
    for path in crdgen.write_all(Path(args.output)):
        print(f"wrote {path}")
    if docs:
        docs.write_text(apidocs.render())
        print(f"wrote {docs}")
    return 0


def _cmd_operator(args: argparse.Namespace) -> int:
    from bigmodel_operator.main import run_operator

    return run_operator(
        namespaces=args.namespace,
        all_namespaces=args.all_namespaces,
        liveness=args.liveness,
        verbose=args.verbose,
        config_file=args.config,
    )


def _cmd_plan(args: argparse.Namespace) -> int:
    from bigmodel_operator.planning_cli import plan_command

    return plan_command(Path(args.file), config_json=args.model_config, output=args.output)


def _cmd_serve(args: argparse.Namespace) -> int:
    from bigmodel_operator.local import serve_manifest

    return serve_manifest(Path(args.file), host=args.host, port=args.port)


def _cmd_tiny_model(args: argparse.Namespace) -> int:
    from bigmodel_training.tinymodel import make_tiny_model

    path = make_tiny_model(Path(args.dir))
    print(f"tiny random Llama model ready in {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bigmodel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("version", help="print the version").set_defaults(func=_cmd_version)

    crds = sub.add_parser("crds", help="generate the CustomResourceDefinitions from the API")
    crds.add_argument("--output", default="crds", help="directory to write into (default crds/)")
    crds.add_argument("--check", metavar="DIR", help="compare DIR with the API instead of writing; exit 1 on drift")
    crds.add_argument("--docs", metavar="FILE", help="also write (or check) the API reference, e.g. docs/api.md")
    crds.set_defaults(func=_cmd_crds)

    op = sub.add_parser("operator", help="run the operator (kopf)")
    op.add_argument("--namespace", "-n", action="append", default=[], help="watch this namespace (repeatable)")
    op.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (default)")
    op.add_argument("--liveness", default=None, help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    op.add_argument("--config", default=None, help="operator config file (YAML): images, GPU table, defaults")
    op.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    op.set_defaults(func=_cmd_operator)

    plan = sub.add_parser("plan", help="print the GPU memory plan of a BigModel or FineTuneJob manifest, offline")
    plan.add_argument("file", help="manifest (YAML)")
    plan.add_argument("--model-config", help="the model's config.json, when the manifest has none inline")
    plan.add_argument("--output", "-o", choices=["text", "yaml", "json"], default="text")
    plan.set_defaults(func=_cmd_plan)

    serve = sub.add_parser("serve", help="serve a BigModel manifest locally (Ray Serve on 127.0.0.1, CPU)")
    serve.add_argument("file", help="BigModel manifest (YAML)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=None, help="default: the operator config's serve_port (8000)")
    serve.set_defaults(func=_cmd_serve)

    dev = sub.add_parser("dev", help="developer helpers")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)
    tiny = dev_sub.add_parser("tiny-model", help="generate a tiny random Llama model + tokenizer offline")
    tiny.add_argument("dir", help="output directory")
    tiny.set_defaults(func=_cmd_tiny_model)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
