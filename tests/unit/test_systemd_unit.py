"""systemd/sms-bridge.service: the directives issue 7 asks for, and `systemd-analyze verify`."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bridge.config import load_config
from tests.peers import require_peer

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "sms-bridge.service"


def _directives() -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {raw!r}"
        sections[current].setdefault(key, []).append(value)
    return sections


def test_service_directives() -> None:
    service = _directives()["Service"]
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "ExecStart": "/usr/local/bin/sms-bridge run -c /etc/sms-bridge/config.yaml",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "RestartSec": "5",
        "TimeoutStopSec": "60",
        "DynamicUser": "yes",
        "StateDirectory": "sms-bridge",
        "ConfigurationDirectory": "sms-bridge",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallFilter": "@system-service",
        "SystemCallArchitectures": "native",
        "UMask": "0077",
    }
    for key, value in expected.items():
        assert service.get(key) == [value], key
    assert service["LoadCredential"] == [
        "smpp-password:/etc/sms-bridge/smpp-password",
        "relay-password:/etc/sms-bridge/relay-password",
    ]
    assert _directives()["Install"]["WantedBy"] == ["multi-user.target"]


def test_comments_show_the_config_paths() -> None:
    text = UNIT.read_text()
    assert "password_file: ${CREDENTIALS_DIRECTORY}/smpp-password" in text
    assert "password_file: ${CREDENTIALS_DIRECTORY}/relay-password" in text
    assert 'README, "Install"' in text
    readme = (UNIT.parents[1] / "README.md").read_text()
    assert "\n## Install\n" in readme
    assert "path: /var/lib/sms-bridge/" in text


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        require_peer("systemd-analyze", "not found (Debian: apt-get install systemd)")
    return tool


def _verify(tool: str, unit: Path) -> None:
    proc = subprocess.run(
        [tool, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=unit.parent,
        check=False,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    # Unknown keys and unparsable values are only warnings (exit 0): any line about our unit
    # is a finding. Lines about other units or the container are the host's, not ours.
    ours = [line for line in output.splitlines() if unit.name in line]
    assert ours == [], "\n".join(ours)


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = _systemd_analyze()
    # verify checks that ExecStart's binary exists and is executable; the installed path
    # (/usr/local/bin/sms-bridge) does not exist in a checkout, so a copy points at /bin/true.
    text = UNIT.read_text()
    exec_line = "ExecStart=/usr/local/bin/sms-bridge run -c /etc/sms-bridge/config.yaml"
    assert exec_line in text
    copy = tmp_path / UNIT.name
    copy.write_text(
        text.replace(exec_line, "ExecStart=/bin/true run -c /etc/sms-bridge/config.yaml")
    )
    _verify(tool, copy)


# Where the README's install steps write: rewritten into a scratch root for the test.
_SYSTEM_DIRS = ("/etc/", "/opt/", "/usr/local/", "/usr/share/", "/var/lib/", "/run/")


def _install_block(readme: str, mark: str, lang: str) -> str:
    after = readme.split(f"<!-- {mark}:", 1)[1]
    return after.split(f"```{lang}\n", 1)[1].split("```", 1)[0]


def _in_root(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def _lay_out(root: Path, block: str) -> list[str]:
    """Run the README's install steps with every system path moved under `root`. The steps
    that need a live system (pip, editors, systemctl, the journal, check-config) are replaced
    or left to the test; returns them, so the test can see nothing else was skipped."""
    skipped = []
    for line in block.splitlines():
        argv = shlex.split(line, comments=True)
        if not argv:
            continue
        if argv[0] == "sudo":
            argv = argv[1:]
        if argv[:3] == ["python3", "-m", "venv"]:
            _in_root(root, argv[3]).joinpath("bin").mkdir(parents=True)
            continue
        if argv[0].endswith("/pip") and argv[1] == "install":
            # What pip would put there: the console script (here a stand-in that runs the
            # checkout), executable.
            script = _in_root(root, str(Path(argv[0]).parent / "sms-bridge"))
            script.write_text(f'#!/bin/sh\nexec {sys.executable} -m bridge "$@"\n')
            script.chmod(0o755)
            continue
        if argv[0] in ("sudoedit", "systemctl", "journalctl") or "check-config" in argv:
            skipped.append(argv[0] if argv[0] != "env" else "check-config")
            continue
        moved = [str(_in_root(root, a)) if a.startswith(_SYSTEM_DIRS) else a for a in argv]
        subprocess.run(moved, cwd=REPO, check=True, timeout=30)
    return skipped


def test_install_steps_create_every_file_the_unit_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Follow README "Install" in a scratch root: every path the unit reads then exists, the
    config the README describes loads with the credentials where systemd puts them, and the
    unit verifies."""
    tool = _systemd_analyze()
    readme = (REPO / "README.md").read_text()
    root = tmp_path / "root"
    for existing in ("etc/systemd/system", "usr/local/bin", "usr/share/doc"):  # on any Debian
        (root / existing).mkdir(parents=True)
    skipped = _lay_out(root, _install_block(readme, "install", "sh"))
    assert sorted(set(skipped)) == ["check-config", "journalctl", "sudoedit", "systemctl"]

    service = _directives()["Service"]
    exec_start = shlex.split(service["ExecStart"][0])
    binary = _in_root(root, exec_start[0])
    assert binary.exists() and os.access(binary, os.X_OK), f"{exec_start[0]} not installed"
    config = _in_root(root, exec_start[exec_start.index("-c") + 1])
    assert config.is_file() and config.stat().st_mode & 0o004, "config not readable by the service"
    assert _in_root(root, "/etc/systemd/system/sms-bridge.service").read_text() == UNIT.read_text()
    credentials = {}
    for entry in service["LoadCredential"]:
        name, _, source = entry.partition(":")
        path = _in_root(root, source)
        assert path.is_file(), f"LoadCredential={entry}: the install steps do not create it"
        assert path.stat().st_mode & 0o077 == 0, f"{source} is readable by others"
        credentials[name] = path
    doc = _directives()["Unit"]["Documentation"][0].removeprefix("file://")
    assert _in_root(root, doc).is_file(), f"Documentation={doc} is not installed"

    # The README's config for the service, with the secrets as the sudoedit steps would leave
    # them, checked as systemd runs it: ${CREDENTIALS_DIRECTORY} holds a copy of each.
    creds_dir = tmp_path / "credentials"
    creds_dir.mkdir()
    secrets = {"smpp-password": "s3cret", "relay-password": "relay password"}
    assert set(secrets) == set(credentials)
    for name, secret in secrets.items():
        (creds_dir / name).write_text(f"{secret}\n")
    data = yaml.safe_load(config.read_text())
    for section, values in yaml.safe_load(_install_block(readme, "install-config", "yaml")).items():
        data[section] = {**(data.get(section) or {}), **values}
    data["smpp"].pop("password", None)  # the example's demo password gives way to the file
    data["store"]["path"] = str(tmp_path / "state" / "sms-bridge.db")  # StateDirectory stand-in
    data["mail"]["maildir"] = str(tmp_path / "state" / "mail")
    config.write_text(yaml.safe_dump(data))
    proc = subprocess.run(
        [str(binary), "check-config", "-c", str(config)],
        env={**os.environ, "CREDENTIALS_DIRECTORY": str(creds_dir)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds_dir))
    cfg = load_config(config)
    assert cfg.smpp.password == "s3cret" and cfg.mail.password == "relay password"

    # The unit as installed, its paths pointing into the scratch root, verifies.
    text = UNIT.read_text()
    for directory in ("/usr/local/bin/", "/etc/sms-bridge/"):
        text = text.replace(f"={directory}", f"={_in_root(root, directory)}/").replace(
            f":{directory}", f":{_in_root(root, directory)}/"
        )
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    _verify(tool, unit)
