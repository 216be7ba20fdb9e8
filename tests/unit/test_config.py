from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from bridge.cli import main
from bridge.config import Config, ConfigError, load_config, load_config_text, parse_duration
from bridge.passwords import Verifier, hash_password
from tests.conftest import BASE, MakeConfig, merge

ROOT = Path(__file__).resolve().parents[2]


def test_example_config_loads() -> None:
    cfg = load_config(ROOT / "config.example.yaml")
    assert cfg.smtp.domains == ("sms.example.org",)
    assert cfg.smpp.simulator is True
    assert cfg.tenants[0].id == "riverside"
    assert cfg.store.path == ROOT / "var" / "sms-bridge.db"


def _problems(text: str, base: Path = Path(".")) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, base)
    return info.value.problems


def test_unknown_key_names_path_and_line() -> None:
    data = merge(BASE, {"smpp": {"windw": 5}})
    problems = _problems(yaml.safe_dump(data, sort_keys=False))
    assert len(problems) == 1
    assert problems[0].startswith("smpp.windw (line ")
    assert "unknown key" in problems[0]


def test_bad_values_are_explained() -> None:
    data = merge(BASE, {"smtp": {"listen": "localhost"}})
    data["tenants"][0]["region"] = "XX"
    data["tenants"][0]["networks"] = ["10.0.0.300/8"]
    problems = _problems(yaml.safe_dump(data, sort_keys=False))
    text = "\n".join(problems)
    assert "smtp.listen" in text and "host:port" in text
    assert "tenants[0].region" in text and "region code" in text
    assert "tenants[0].networks" in text and "CIDR" in text


def test_plain_password_in_users_is_refused() -> None:
    data = merge(BASE, {})
    data["tenants"][0]["users"] = {"koha": "hunter2"}
    (problem,) = _problems(yaml.safe_dump(data))
    assert "tenants[0].users" in problem and "hash-password" in problem


def test_missing_section() -> None:
    data = merge(BASE, {})
    del data["smpp"]
    (problem,) = _problems(yaml.safe_dump(data))
    assert problem.startswith("smpp") and "required" in problem


def test_yaml_syntax_error_has_line() -> None:
    (problem,) = _problems("smtp:\n  listen: [\n")
    assert "not valid YAML" in problem and "line" in problem


def test_secrets_from_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "smpp.secret").write_text("s3cret\n")
    monkeypatch.setenv("RELAY_PASSWORD", "relaypw")
    data = merge(BASE, {"mail": {"password": "${RELAY_PASSWORD}"}})
    del data["smpp"]["password"]
    data["smpp"]["password_file"] = "smpp.secret"
    cfg = load_config_text(yaml.safe_dump(data), tmp_path)
    assert cfg.smpp.password == "s3cret"
    assert cfg.mail.password == "relaypw"


def test_secret_file_path_from_the_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd's LoadCredential=: password_file: ${CREDENTIALS_DIRECTORY}/smpp-password."""
    (tmp_path / "smpp-password").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    data = merge(BASE, {})
    del data["smpp"]["password"]
    data["smpp"]["password_file"] = "${CREDENTIALS_DIRECTORY}/smpp-password"
    assert load_config_text(yaml.safe_dump(data), Path("/nonexistent")).smpp.password == "s3cret"


def test_unset_env_is_an_error() -> None:
    data = merge(BASE, {"mail": {"password": "${SMS_BRIDGE_SURELY_UNSET}"}})
    (problem,) = _problems(yaml.safe_dump(data))
    assert problem == "mail.password: environment variable SMS_BRIDGE_SURELY_UNSET is not set"


def test_durations() -> None:
    assert parse_duration("24h") == 86400
    assert parse_duration("250ms") == 0.25
    assert parse_duration(5) == 5.0
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_config_is_frozen(make_config: MakeConfig) -> None:
    cfg = make_config()
    with pytest.raises(Exception, match="frozen"):
        cfg.smpp.window = 3  # type: ignore[misc]


def test_duplicate_tenant_ids(make_config: MakeConfig) -> None:
    t = BASE["tenants"][0]
    with pytest.raises(ConfigError, match="appears twice"):
        make_config({"tenants": [t, t]})


def test_example_documents_the_defaults() -> None:
    """Every commented `# key: value` under smtp:/smpp:/mail: in config.example.yaml is the
    default the code uses, so the example never lies about what happens when a key is left out."""
    text = (ROOT / "config.example.yaml").read_text()
    cfg = load_config(ROOT / "config.example.yaml")
    section = None
    checked = 0
    for line in text.splitlines():
        m = re.match(r"^(\w+):", line)
        if m:
            section = m.group(1)
            continue
        m = re.match(r"^  # (\w+): (.+?)(?:\s{2,}#.*)?$", line)
        if not m or section not in ("smtp", "smpp", "mail", "store", "inbound", "compliance"):
            continue
        key, raw = m.groups()
        model = getattr(cfg, section)
        if key not in type(model).model_fields:
            continue
        default = type(model).model_fields[key].default
        if default is None:  # an example value, not a default
            continue
        value = yaml.safe_load(raw)
        if key.endswith("_s") or key == "max_age":
            value = parse_duration(value)
        if isinstance(value, list):
            value = tuple(value)
        assert value == default, f"{section}.{key}: example says {raw}, code default {default}"
        checked += 1
    assert checked >= 35


def test_check_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "-c", str(ROOT / "config.example.yaml")]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "tenant       riverside" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(merge(BASE, {"smtp": {"domain": ["x.org"]}})))
    with pytest.raises(SystemExit) as info:
        main(["check-config", "-c", str(bad)])
    assert info.value.code == 1
    assert "smtp.domain" in capsys.readouterr().err


def test_password_hash_roundtrip() -> None:
    hashed = hash_password("correct horse")
    v = Verifier()
    assert v.verify(b"correct horse", hashed)
    assert v.verify(b"correct horse", hashed)  # cached path
    assert not v.verify(b"wrong", hashed)
    assert isinstance(load_config_text, object) and Config is not None


def test_bare_yes_keyword_is_explained() -> None:
    data = merge(BASE, {"compliance": {"optin_keywords": ["START", True]}})
    (problem,) = _problems(yaml.safe_dump(data))
    assert problem.startswith("compliance.optin_keywords") and 'quote it, e.g. "YES"' in problem


def test_example_shows_every_key() -> None:
    """config.example.yaml is the reference: every key of every section appears in it."""
    from pydantic import BaseModel

    from bridge import config as c

    text = (ROOT / "config.example.yaml").read_text()
    missing = []

    def walk(model: type[BaseModel], path: str) -> None:
        for name, field in model.model_fields.items():
            key = field.alias or name
            if not re.search(rf"^\s*#?\s*-?\s*{re.escape(key)}:", text, flags=re.M):
                missing.append(f"{path}{key}")
            ann = field.annotation
            for sub in (ann, *getattr(ann, "__args__", ())):
                if isinstance(sub, type) and issubclass(sub, BaseModel):
                    walk(sub, f"{path}{key}.")

    walk(c.Config, "")
    assert missing == [], missing
