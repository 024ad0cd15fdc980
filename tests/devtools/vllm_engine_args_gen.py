"""Generate `vllm_engine_args.py` and `vllm_tool_parsers.py`: what the installed vLLM accepts, as plain data.

    python tests/devtools/vllm_engine_args_gen.py --write   # regenerate the modules
    python tests/devtools/vllm_engine_args_gen.py --check   # exit 1 when one drifted

Names come from vLLM's own CLI (`AsyncEngineArgs.add_cli_args`: what `vllm serve --help` lists), types
from the `AsyncEngineArgs` dataclass fields, because the serving app passes the values as keyword
arguments of that dataclass, not through argparse. Types are reduced to JSON kinds (`bool`, `int`,
`float`, `str`, `list`, `object`, `null`) plus the allowed values of `Literal`s and enums. vllm is
imported only here, so the operator itself never needs it. The tool-call parsers are the names vLLM's
`ToolParserManager` registers (`--tool-call-parser` choices); they live in the api package because the
BigModel schema lists them (`spec.engine.toolCallParser`).
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

OPERATOR = Path(__file__).resolve().parents[2] / "operator/bigmodel_operator"
MODULE_PATH = OPERATOR / "builders/vllm_engine_args.py"
PARSERS_PATH = OPERATOR / "api/vllm_tool_parsers.py"
# OpenAI-frontend arguments (`FrontendArgs`) that shape responses and that the serving app passes on;
# the rest (host, port, TLS, CORS, middleware, API keys, logging) belong to Ray Serve or to us.
FRONTEND_ARGS = (
    "chat_template",
    "chat_template_content_format",
    "default_chat_template_kwargs",
    "response_role",
    "return_tokens_as_token_ids",
    "enable_auto_tool_choice",
    "exclude_tools_when_tool_choice_none",
    "tool_call_parser",
    "tool_parser_plugin",
    "enable_prompt_tokens_details",
    "enable_force_include_usage",
)
_SCALARS: dict[type, str] = {bool: "bool", int: "int", float: "float", str: "str"}
_LISTS = (list, set, tuple, frozenset)


def _kinds(annotation: Any) -> tuple[set[str], set[Any], bool]:
    """(JSON kinds, literal choices, whether a plain value of the choices' kind is also accepted)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        kinds: set[str] = set()
        choices: set[Any] = set()
        free = False
        for member in typing.get_args(annotation):
            k, c, f = _kinds(member)
            kinds |= k
            choices |= c
            free = free or f
        return kinds, choices, free
    if origin is typing.Literal:
        values = set(typing.get_args(annotation))
        return {_SCALARS[type(v)] for v in values if type(v) in _SCALARS}, values, False
    if annotation is type(None) or annotation is None:
        return {"null"}, set(), False
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        # Members by name, and by value where the value is a short scalar (not a class path).
        values = {m.value for m in annotation if type(m.value) in _SCALARS and "." not in str(m.value)}
        names = {m.name for m in annotation}
        return {_SCALARS[type(v)] for v in values} | {"str"}, values | names, False
    if annotation in _SCALARS:
        return {_SCALARS[annotation]}, set(), True
    if origin in _LISTS or annotation in _LISTS:
        return {"list"}, set(), True
    if origin is dict or annotation is dict or dataclasses.is_dataclass(annotation):
        return {"object"}, set(), True
    if isinstance(annotation, str):
        return _kinds_of_text(annotation)
    return set(), set(), True  # callables, classes, torch dtypes: cannot come from a manifest


def _kinds_of_text(annotation: str) -> tuple[set[str], set[Any], bool]:
    """Kinds of a forward reference such as "str | dict[str, Any] | QuantizationConfigArgs | None"."""
    kinds: set[str] = set()
    for part in (p.strip() for p in annotation.split("|")):
        if part in ("str", "int", "float", "bool"):
            kinds.add(part)
        elif part == "None":
            kinds.add("null")
        elif part.startswith(("list[", "set[", "tuple[")):
            kinds.add("list")
        elif part.startswith("dict[") or part.endswith(("Args", "Config")):
            kinds.add("object")  # a TypedDict or config class is given as a JSON object
    return kinds, set(), True


def introspect() -> tuple[str, dict[str, tuple[tuple[str, ...], tuple[Any, ...]]], dict[str, str]]:
    """(vLLM version, {dest: (kinds, choices)}, {alias flag: dest}) from the installed vllm."""
    import vllm
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import FrontendArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    engine_parser, frontend_parser = FlexibleArgumentParser(), FlexibleArgumentParser()
    AsyncEngineArgs.add_cli_args(engine_parser)
    FrontendArgs.add_cli_args(frontend_parser)
    fields = {f.name: f.type for f in dataclasses.fields(AsyncEngineArgs)}
    fields |= {f.name: f.type for f in dataclasses.fields(FrontendArgs) if f.name in FRONTEND_ARGS}
    args: dict[str, tuple[tuple[str, ...], tuple[Any, ...]]] = {}
    aliases: dict[str, str] = {}
    for action in [*engine_parser._actions, *frontend_parser._actions]:
        if isinstance(action, argparse._HelpAction) or action.dest not in fields:
            continue
        kinds, choices, free = _kinds(fields[action.dest])
        if isinstance(action, argparse.BooleanOptionalAction | argparse._StoreTrueAction):
            kinds |= {"bool"}
        if free and any(_SCALARS.get(type(c)) in kinds for c in choices):
            choices = set()  # e.g. Literal[...] | str: any string goes
        if not choices and action.choices and kinds == {"str"}:
            choices = set(action.choices)  # a plain str field whose CLI lists the values
        args[action.dest] = (tuple(sorted(kinds)), tuple(sorted(choices, key=lambda c: (str(type(c)), c))))
        long_flag = "--" + action.dest.replace("_", "-")
        for flag in action.option_strings:
            if flag not in (long_flag, "--no-" + action.dest.replace("_", "-")):
                aliases[flag] = action.dest
    return vllm.__version__, dict(sorted(args.items())), dict(sorted(aliases.items()))


def tool_parsers() -> list[str]:
    """The `--tool-call-parser` names the installed vLLM registers (eagerly or lazily)."""
    from vllm.tool_parsers import ToolParserManager

    return sorted(ToolParserManager.list_registered())


def render_parsers(version: str, parsers: list[str]) -> str:
    lines = [
        f'"""Tool-call parsers of vLLM {version}, GENERATED by tests/devtools/vllm_engine_args_gen.py: do not edit.',
        "",
        "The names vLLM's ToolParserManager registers: the values of `--tool-call-parser`.",
        '"""',
        "",
        f'VLLM_VERSION = "{version}"',
        "",
        "TOOL_CALL_PARSERS: tuple[str, ...] = (",
    ]
    lines += [f"    {name!r}," for name in parsers]
    lines += [")", ""]
    return "\n".join(lines)


def render(version: str, args: dict[str, tuple[tuple[str, ...], tuple[Any, ...]]], aliases: dict[str, str]) -> str:
    lines = [
        f'"""Engine arguments of vLLM {version}, GENERATED by tests/devtools/vllm_engine_args_gen.py: do not edit.',
        "",
        "ENGINE_ARGS maps each keyword of `AsyncEngineArgs` that `vllm serve` exposes as `--name` (and the",
        "OpenAI-frontend ones listed in FRONTEND_ARGS there) to (JSON kinds it accepts, allowed values or ()).",
        "ALIASES maps vLLM's short flags to their keyword.",
        '"""',
        "",
        f'VLLM_VERSION = "{version}"',
        "",
        "ENGINE_ARGS: dict[str, tuple[tuple[str, ...], tuple[object, ...]]] = {",
    ]
    lines += [f"    {dest!r}: ({kinds!r}, {choices!r})," for dest, (kinds, choices) in args.items()]
    lines += ["}", "", "ALIASES: dict[str, str] = {"]
    lines += [f"    {flag!r}: {dest!r}," for flag, dest in aliases.items()]
    lines += ["}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    mode = (argv if argv is not None else sys.argv[1:]) or ["--check"]
    version, args, aliases = introspect()
    parsers = tool_parsers()
    if mode[0] == "--write":
        MODULE_PATH.write_text(render(version, args, aliases))
        PARSERS_PATH.write_text(render_parsers(version, parsers))
        ruff = Path(sys.executable).with_name("ruff")
        if ruff.exists():
            subprocess.run([str(ruff), "format", "-q", str(MODULE_PATH), str(PARSERS_PATH)], check=True)
        print(f"wrote {MODULE_PATH} ({len(args)} engine arguments of vLLM {version}) and {PARSERS_PATH.name}")
        return 0
    from bigmodel_operator.api import vllm_tool_parsers
    from bigmodel_operator.builders import vllm_engine_args as committed

    fresh = {dest: (list(k), list(c)) for dest, (k, c) in args.items()}
    old = {dest: (list(k), list(c)) for dest, (k, c) in committed.ENGINE_ARGS.items()}
    drift = [f"vLLM version {committed.VLLM_VERSION} -> {version}"] if version != committed.VLLM_VERSION else []
    drift += [f"new in vLLM: {d}" for d in sorted(fresh.keys() - old.keys())]
    drift += [f"gone from vLLM: {d}" for d in sorted(old.keys() - fresh.keys())]
    drift += [f"changed: {d} {old[d]} -> {fresh[d]}" for d in sorted(fresh.keys() & old.keys()) if fresh[d] != old[d]]
    if dict(committed.ALIASES) != aliases:
        drift.append(f"aliases: {committed.ALIASES} -> {aliases}")
    if list(vllm_tool_parsers.TOOL_CALL_PARSERS) != parsers:
        drift.append(f"tool-call parsers: {vllm_tool_parsers.TOOL_CALL_PARSERS} -> {parsers}")
    if drift:
        print("vllm_engine_args.py or vllm_tool_parsers.py is stale; rerun with --write:\n  " + "\n  ".join(drift))
        return 1
    print(f"vllm_engine_args.py matches vLLM {version} ({len(args)} engine arguments)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
