"""A throw-away Dovecot IMAP server for flow tests: loopback port, plaintext login, Maildir in a
temporary directory, started as a subprocess (`dovecot -F`) and stopped in teardown.

Dovecot refuses to give mail access to UID 0 and its login processes run as an unprivileged
user, so when the tests run as root (CI, containers) the instance lives in a world-readable
directory outside pytest's tmp_path (that one sits in a 0700 root directory) and mail is
stored as `nobody`. As an ordinary user, every Dovecot process simply runs as that user.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

DOVECOT = Path(os.environ.get("SMS_BRIDGE_DOVECOT", "/usr/sbin/dovecot"))
USER = "library"
PASSWORD = "imap-secret"
START_TIMEOUT_S = 10.0


@dataclass
class Dovecot:
    host: str
    port: int
    user: str
    password: str
    root: Path

    def for_user(self, user: str) -> Dovecot:
        """The same server, another mailbox owner: every user name logs in with PASSWORD and
        gets its own Maildir, so tests sharing one server do not see each other's mail."""
        return replace(self, user=user)

    @property
    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @contextlib.contextmanager
    def client(self) -> Iterator[imaplib.IMAP4]:
        """A blocking stdlib IMAP client, for delivering and inspecting from the test side."""
        imap = imaplib.IMAP4(self.host, self.port, timeout=5)
        try:
            imap.login(self.user, self.password)
            yield imap
        finally:
            with contextlib.suppress(Exception):
                imap.logout()

    def append(self, raw: bytes, mailbox: str = "INBOX") -> None:
        """Deliver a message the way a mail server's local delivery would: IMAP APPEND."""
        with self.client() as imap:
            typ, data = imap.append(mailbox, None, None, raw)
            assert typ == "OK", data

    def uids(self, mailbox: str = "INBOX", criteria: str = "ALL") -> list[int]:
        with self.client() as imap:
            typ, data = imap.select(_quote(mailbox))
            if typ != "OK":
                return []
            typ, data = imap.uid("SEARCH", criteria)
            assert typ == "OK", data
            return [int(x) for x in (data[0] or b"").split()]

    def flags(self, mailbox: str = "INBOX") -> dict[int, str]:
        with self.client() as imap:
            typ, _ = imap.select(_quote(mailbox))
            assert typ == "OK"
            typ, data = imap.uid("FETCH", "1:*", "(FLAGS)")
            assert typ == "OK", data
            out: dict[int, str] = {}
            for item in data:
                if not isinstance(item, bytes):
                    continue
                text = item.decode()
                uid = int(text.split("UID ")[1].split()[0].rstrip(")"))
                out[uid] = text[text.index("FLAGS (") + 7 :].split(")")[0]
            return out

    def mailboxes(self) -> list[str]:
        with self.client() as imap:
            typ, data = imap.list()
            assert typ == "OK", data
            out = []
            for item in data:
                m = _LIST_LINE.match(item.decode()) if isinstance(item, bytes) else None
                if m:
                    out.append(m.group(1).strip('"'))
            return sorted(out)


# RFC 3501 §7.2.2: (flags) "delimiter" name
_LIST_LINE = re.compile(r'\([^)]*\) (?:NIL|"[^"]*") (.*)$')


def _quote(mailbox: str) -> str:
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _free_port() -> int:
    # A small race (another process could take the port before Dovecot binds it) is accepted:
    # Dovecot cannot be told to bind port 0 and report the port back.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(root: Path, port: int, uid: int, gid: int, login_user: str, internal_user: str) -> str:
    return f"""\
protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
instance_name = sms-bridge-test-{port}
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_login_user = {login_user}
default_internal_user = {internal_user}
first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
last_valid_gid = {gid}
mail_location = maildir:{root}/mail/%u
mailbox_list_index = no
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
passdb {{
  driver = static
  args = password={PASSWORD}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u
}}
protocol imap {{
  imap_idle_notify_interval = 1 secs
}}
"""


def _wait_ready(host: str, port: int, proc: subprocess.Popen[bytes], root: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            log = (root / "dovecot.log").read_text(errors="replace") if root.exists() else ""
            raise RuntimeError(f"dovecot exited with {proc.returncode}:\n{log}")
        try:
            with socket.create_connection((host, port), timeout=1) as s:
                s.settimeout(2)
                if s.recv(200).startswith(b"* OK"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"dovecot did not answer on {host}:{port} in {START_TIMEOUT_S}s")
        time.sleep(0.05)


def require_dovecot() -> None:
    if DOVECOT.exists():
        return
    msg = (
        f"Dovecot is not installed ({DOVECOT} missing); "
        "install it with `apt-get install dovecot-imapd` (make test does this as root)"
    )
    if os.environ.get("SMS_BRIDGE_REQUIRE_PEERS") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


@contextlib.contextmanager
def run_dovecot() -> Iterator[Dovecot]:
    require_dovecot()
    root = Path(tempfile.mkdtemp(prefix="sms-bridge-dovecot-"))
    try:
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            uid, gid = nobody.pw_uid, nobody.pw_gid
            login_user, internal_user = _system_user("dovenull"), _system_user("dovecot")
            # Login and mail processes run unprivileged and must reach base_dir and the mail.
            root.chmod(0o755)
            for sub in ("mail", "home"):
                (root / sub).mkdir()
                os.chown(root / sub, uid, gid)
        else:
            uid, gid = os.getuid(), os.getgid()
            login_user = internal_user = pwd.getpwuid(uid).pw_name
        port = _free_port()
        conf = root / "dovecot.conf"
        conf.write_text(_config(root, port, uid, gid, login_user, internal_user))
        proc = subprocess.Popen(
            [str(DOVECOT), "-F", "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_ready("127.0.0.1", port, proc, root)
            yield Dovecot("127.0.0.1", port, USER, PASSWORD, root)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _system_user(name: str) -> str:
    # Debian's package creates dovenull/dovecot; a hand-built Dovecot may not have them.
    try:
        pwd.getpwnam(name)
    except KeyError:
        return "nobody"
    return name


@pytest.fixture(scope="module")
def dovecot_server() -> Iterator[Dovecot]:
    with run_dovecot() as server:
        yield server


@pytest.fixture
def dovecot(dovecot_server: Dovecot, request: pytest.FixtureRequest) -> Dovecot:
    """One Dovecot per test module; each test gets a mailbox user of its own."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    return dovecot_server.for_user(name or "library")
