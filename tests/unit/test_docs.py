"""Docs that cannot drift: every configuration key the README, config.example.yaml's comments
and the systemd unit name exists in the configuration model, and every `sms-bridge` command
line in them parses."""

from __future__ import annotations

import re
import shlex
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from bridge.cli import build_parser
from bridge.config import _SECRET_KEYS, Config

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
EXAMPLE = ROOT / "config.example.yaml"
UNIT = ROOT / "systemd" / "sms-bridge.service"

SECTIONS = tuple(Config.model_fields)
# `smpp.max_tps`, `tenants[].reply_to`, `smtp.tls.cert`, `inbound.*`: a section name, then
# dotted keys. Host and file names (`smtp.example.org`, `inbound.py`) are told apart by a label.
_KEY = re.compile(
    rf"(?<![\w./-])((?:{'|'.join(SECTIONS)})(?:\[\])?(?:\.(?:[a-z_]+|\*)(?:\[\])?)+)(?![\w-])"
)
_HOSTISH = {"example", "org", "com", "net", "carrier", "py", "yaml", "md"}  # hosts, files


def _models(annotation: object) -> list[type[BaseModel]]:
    """The pydantic models inside an annotation (X, X | None, tuple[X, ...])."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def key_exists(dotted: str) -> bool:
    model: type[BaseModel] = Config
    parts = [p.removesuffix("[]") for p in dotted.split(".")]
    for i, part in enumerate(parts):
        if part == "*":
            return i == len(parts) - 1
        if part.endswith("_file") and part.removesuffix("_file") in _SECRET_KEYS:
            part = part.removesuffix("_file")
        fields = {f.alias or name: f for name, f in model.model_fields.items()}
        if part not in fields:
            return False
        inner = _models(fields[part].annotation)
        if i < len(parts) - 1:
            if not inner:
                return False
            model = inner[0]
    return True


def _dotted_keys(text: str) -> set[str]:
    return {
        k
        for k in _KEY.findall(text)
        if not _HOSTISH & {p.removesuffix("[]") for p in k.split(".")[1:]}
    }


def _fences(text: str, lang: str | None = None) -> list[str]:
    pattern = r"^```(\w*)\n(.*?)^```" if lang is None else rf"^```{lang}\n(.*?)^```"
    found = re.findall(pattern, text, flags=re.M | re.S)
    return [f[1] if isinstance(f, tuple) else f for f in found]


def readme_keys() -> set[str]:
    text = README.read_text(encoding="utf-8")
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    keys = set()
    for span in re.findall(r"`([^`\n]+)`", prose):
        keys |= _dotted_keys(span)
    # Table rows list siblings after the first key: `| `smtp.max_message_bytes`, `max_recipients` |`
    for row in re.findall(r"^\| (`[^|]+)\|", prose, flags=re.M):
        names = re.findall(r"`([^`]+)`", row)
        if names and _dotted_keys(names[0]):
            parent = names[0].rsplit(".", 1)[0]
            keys |= {f"{parent}.{n}" for n in names[1:] if re.fullmatch(r"[a-z_]+", n)}
    return keys


def yaml_keys(data: object, prefix: str = "") -> set[str]:
    """Every key path in a YAML snippet, list items as `[]`."""
    keys: set[str] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            keys.add(path)
            keys |= yaml_keys(value, path)
    elif isinstance(data, list):
        for item in data:
            keys |= yaml_keys(item, f"{prefix}[]")
    return keys


def comment_text(path: Path) -> str:
    lines = path.read_text(encoding="utf-8").splitlines()
    return "\n".join(line.split("#", 1)[1] for line in lines if "#" in line)


def unit_yaml_snippets() -> list[object]:
    """The indented YAML examples in the unit file's comments (`#   store:` / `#     path: ...`)."""
    snippets, current = [], []
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        body = line[1:] if line.startswith("#") else None
        if body is not None and re.match(r"\s{3,}[a-z_]+:( |$)", body):
            current.append(body)
            continue
        if current:
            indent = min(len(c) - len(c.lstrip()) for c in current)
            snippets.append(yaml.safe_load("\n".join(c[indent:] for c in current)))
            current = []
    return snippets


def test_key_check_sees_a_wrong_key() -> None:
    assert key_exists("privacy.retain_bodies_days") and key_exists("tenants[].reply_to")
    assert key_exists("smpp.password_file") and key_exists("inbound.*")
    assert not key_exists("store.body_retention_s") and not key_exists("smtp.tls.nope")
    assert _dotted_keys("see `store.body_retention_s` or smtp.example.org") == {
        "store.body_retention_s"
    }


@pytest.mark.parametrize(
    ("source", "keys"),
    [
        ("README prose", readme_keys),
        (
            "README yaml",
            lambda: {
                k for b in _fences(README.read_text(), "yaml") for k in yaml_keys(yaml.safe_load(b))
            },
        ),
        ("config.example.yaml comments", lambda: _dotted_keys(comment_text(EXAMPLE))),
        ("systemd unit comments", lambda: _dotted_keys(comment_text(UNIT))),
        ("systemd unit yaml", lambda: {k for s in unit_yaml_snippets() for k in yaml_keys(s)}),
    ],
)
def test_every_documented_key_exists(source: str, keys: typing.Callable[[], set[str]]) -> None:
    found = keys()
    assert found, f"no keys found in {source}: the extraction is broken"
    unknown = sorted(k for k in found if not key_exists(k))
    assert unknown == [], f"{source} names keys the configuration does not have: {unknown}"


def command_lines() -> list[tuple[str, list[str]]]:
    """`sms-bridge ...` command lines in the README's code blocks and the unit's ExecStart."""
    found = []
    blocks = _fences(README.read_text(encoding="utf-8"))
    blocks.append(
        "\n".join(
            line.split("=", 1)[1]
            for line in UNIT.read_text(encoding="utf-8").splitlines()
            if line.startswith("ExecStart=")
        )
    )
    for block in blocks:
        for line in block.splitlines():
            line = line.strip().removeprefix("$ ")
            try:
                argv = shlex.split(line, comments=True)
            except ValueError:
                continue
            while argv and (argv[0] in ("sudo", "env") or "=" in argv[0]):
                argv = argv[1:]
            if argv and (argv[0] == "sms-bridge" or argv[0].endswith("/sms-bridge")):
                found.append((line, argv[1:]))
    return found


def test_readme_command_lines_parse() -> None:
    commands = command_lines()
    assert len(commands) >= 8, commands
    parser = build_parser()
    for line, argv in commands:
        try:
            parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"README command does not parse: {line}")
