"""Shared by the deploy tests: the repository's deployment files, Compose-style variable
interpolation, and building the processes' real configurations from a command line, an
environment and mounted files, exactly as ``sfu.__main__`` and ``control.__main__`` do."""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from control.__main__ import build_parser as control_parser
from control.config import ControlConfig, load_config
from sfu import config as node_config
from sfu.__main__ import parse_args as node_parse_args

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CONFIG_DIR = DEPLOY / "config"
#: what an operator puts in place of the placeholders (long enough for the 32-character rule)
TEST_SECRET = "t3st-secret-0123456789abcdef0123456789abcdef"
#: the placeholder the templates carry; both processes must refuse it (too short)
PLACEHOLDER_SECRET = "change-me"
NODE_ENTRY = "levelchat-sfu"
CONTROL_ENTRY = "levelchat-control"


def pyproject() -> dict[str, Any]:
    with (REPO / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)


def load_yaml_docs(path: Path) -> list[Any]:
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


# -- Compose interpolation (https://docs.docker.com/compose/environment-variables/variable-interpolation/)
class MissingVariable(KeyError):
    pass


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``,
    ``${VAR?error}``, ``${VAR:+alt}``; defaults may nest. ``MissingVariable`` for a failed ``?``."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "$":
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1] if i + 1 < len(text) else ""
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "{":
            end = _closing_brace(text, i + 2)
            out.append(_expand(text[i + 2 : end], env))
            i = end + 1
        elif (m := _NAME.match(text, i + 1)) is not None:
            out.append(env.get(m.group(), ""))
            i = m.end()
        else:
            raise ValueError(f"bare $ at {i} in {text!r}")
    return "".join(out)


def _closing_brace(text: str, start: int) -> int:
    depth = 1
    for j in range(start, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    raise ValueError(f"unclosed ${{ in {text!r}")


def _expand(body: str, env: Mapping[str, str]) -> str:
    m = _NAME.match(body)
    if m is None:
        raise ValueError(f"bad variable reference ${{{body}}}")
    name, rest = m.group(), body[m.end() :]
    value = env.get(name)
    if not rest:
        return value or ""
    for op in (":-", ":?", ":+", "-", "?", "+"):
        if rest.startswith(op):
            arg = rest[len(op) :]
            unset_or_empty = not value if op.startswith(":") else value is None
            if op.endswith("-"):
                return interpolate(arg, env) if unset_or_empty else str(value)
            if op.endswith("?"):
                if unset_or_empty:
                    raise MissingVariable(f"{name}: {interpolate(arg, env)}")
                return str(value)
            return "" if unset_or_empty else interpolate(arg, env)
    raise ValueError(f"bad variable reference ${{{body}}}")


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(v, env) for v in node]
    if isinstance(node, dict):
        return {k: interpolate_tree(v, env) for k, v in node.items()}
    return node


def env_file(path: Path) -> dict[str, str]:
    """A systemd ``EnvironmentFile`` / compose ``.env``: ``KEY=VALUE`` lines, ``#`` comments."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path}: not KEY=VALUE: {line!r}"
        env[key.strip()] = value.strip()
    return env


def with_secret(env: Mapping[str, str], secret: str = TEST_SECRET) -> dict[str, str]:
    """The environment with the placeholder secret replaced, as an operator would."""
    return {k: v.replace(PLACEHOLDER_SECRET, secret) for k, v in env.items()}


# -- the processes' own configuration paths --------------------------------------------------------
def split_command(command: str | Sequence[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def entry_point(argv: Sequence[str]) -> str:
    """``levelchat-sfu`` / ``levelchat-control`` for a console script or ``python -m sfu|control``."""
    head = Path(argv[0]).name
    if head.startswith("python") and len(argv) > 2 and argv[1] == "-m":
        return {"sfu": NODE_ENTRY, "control": CONTROL_ENTRY}.get(argv[2], argv[2])
    return head


def program_args(argv: Sequence[str]) -> list[str]:
    head = Path(argv[0]).name
    return list(argv[3:] if head.startswith("python") and argv[1:2] == ["-m"] else argv[1:])


def node_config_for(
    argv: Sequence[str], environ: Mapping[str, str], files: Mapping[str, Path]
) -> node_config.NodeConfig:
    """What ``levelchat-sfu ARGS`` would run with; ``files`` maps paths in the process's filesystem
    (``/etc/levelchat/sfu.toml``) to files here. Raises ``ConfigError`` as the node would."""
    args = node_parse_args(program_args(argv))
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "dev") and v is not None}
    file = str(files[args.config]) if args.config else None
    return node_config.load(file=file, flags=flags, environ=environ, dev=args.dev)


def control_config_for(
    argv: Sequence[str], environ: Mapping[str, str], files: Mapping[str, Path]
) -> ControlConfig:
    """What ``levelchat-control ARGS`` would serve with. Raises ``ValueError`` as it would."""
    args = control_parser().parse_args(program_args(argv))
    assert args.command is None, f"{argv} runs an operator command, not the server"
    flags = {k: v for k, v in vars(args).items() if k not in ("config_file", "command")}
    file = str(files[args.config_file]) if args.config_file else None
    return load_config(flags=flags, environ=environ, config_file=file)


def config_file_of(argv: Sequence[str]) -> str:
    args = program_args(argv)
    assert "--config" in args, f"{argv} names no --config file"
    return args[args.index("--config") + 1]
