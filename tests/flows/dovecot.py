"""A throw-away Dovecot IMAP server for flow tests: loopback port, plaintext login, Maildir in a
temporary directory, started as a subprocess (`dovecot -F`) and stopped in teardown.

`run_dovecot(tls=True)` (fixtures `dovecot_tls_server` / `dovecot_tls`) also serves TLS with a
self-signed certificate made by the `openssl` CLI for 127.0.0.1: STARTTLS on the plain IMAP
port and implicit TLS (RFC 8314 §3.2, "imaps") on a second port.

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
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from tests.peers import require_peer
from tests.waiting import eventually_blocking

DOVECOT = Path(os.environ.get("SMS_BRIDGE_DOVECOT", "/usr/sbin/dovecot"))
OPENSSL = os.environ.get("SMS_BRIDGE_OPENSSL", "openssl")
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
    # Only for a TLS instance: the implicit-TLS port and the self-signed certificate (PEM),
    # which is also the CA file a client must trust.
    tls_port: int | None = None
    cert: Path | None = None

    def for_user(self, user: str) -> Dovecot:
        """The same server, another mailbox owner: every user name logs in with PASSWORD and
        gets its own Maildir, so tests sharing one server do not see each other's mail."""
        return replace(self, user=user)

    @property
    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logins(self) -> list[str]:
        """Dovecot's log lines for this user's successful logins. Each ends with "TLS" when
        the session was encrypted, "secured" for plaintext over loopback (Dovecot's %c)."""
        mark = f"Login: user=<{self.user}>"
        return [line for line in self.log.splitlines() if mark in line]

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
                if "UID " not in text:
                    # an unsolicited FETCH telling of another session's flag change (RFC 3501
                    # §7.4.2), not an answer to ours
                    continue
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


def _config(
    root: Path,
    port: int,
    uid: int,
    gid: int,
    login_user: str,
    internal_user: str,
    tls_port: int | None = None,
    cert: Path | None = None,
) -> str:
    if tls_port is None or cert is None:
        ssl_settings = "ssl = no"
        imaps = "port = 0"
    else:
        # ssl = yes, not required: Dovecot counts loopback connections as secured anyway, so
        # "required" would change nothing here, and the test side's plain client (APPEND,
        # flags) keeps working. The login log line tells TLS sessions apart.
        ssl_settings = f"ssl = yes\nssl_cert = <{cert}\nssl_key = <{_key_path(cert)}"
        imaps = f"address = 127.0.0.1\n    port = {tls_port}\n    ssl = yes"
    return f"""\
protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
instance_name = sms-bridge-test-{port}
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
{ssl_settings}
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
    {imaps}
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


def _greets(host: str, port: int, ctx: ssl.SSLContext | None = None) -> bool:
    """The listener answers with an IMAP greeting (RFC 3501 §7.1.1), over TLS with `ctx`."""
    try:
        with socket.create_connection((host, port), timeout=1) as raw:
            s = raw if ctx is None else ctx.wrap_socket(raw, server_hostname=host)
            with s:
                s.settimeout(2)
                return s.recv(200).startswith(b"* OK")
    except OSError:
        return False


def _wait_ready(host: str, port: int, proc: subprocess.Popen[bytes], root: Path) -> None:
    def ready() -> bool:
        if proc.poll() is not None:
            log = (root / "dovecot.log").read_text(errors="replace") if root.exists() else ""
            raise RuntimeError(f"dovecot exited with {proc.returncode}:\n{log}")
        return _greets(host, port)

    eventually_blocking(ready, START_TIMEOUT_S, f"dovecot to answer on {host}:{port}")


def _wait_tls_ready(host: str, port: int, cert: Path) -> None:
    """The implicit-TLS listener completes a handshake and greets."""
    ctx = ssl.create_default_context(cafile=str(cert))
    eventually_blocking(
        lambda: _greets(host, port, ctx), START_TIMEOUT_S, f"dovecot to answer TLS on {host}:{port}"
    )


def _key_path(cert: Path) -> Path:
    return cert.with_name("key.pem")


def require_openssl() -> str:
    path = shutil.which(OPENSSL)
    if path is not None:
        return path
    msg = (
        f"the openssl CLI ({OPENSSL}) is not installed, so no certificate for the TLS Dovecot "
        "can be made; install it with `apt-get install openssl`"
    )
    require_peer("Dovecot", msg)


def make_cert(directory: Path, host: str = "127.0.0.1") -> Path:
    """A self-signed certificate for `host` (CN and an IP subjectAltName: RFC 6125 §6.4.4
    and Python's ssl match an IP address only against an IP SAN). Returns cert.pem; the
    unencrypted key is key.pem next to it. EC P-256 keeps generation fast."""
    openssl = require_openssl()
    cert = directory / "cert.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={host}",
            "-addext",
            f"subjectAltName=IP:{host}",
            "-keyout",
            str(_key_path(cert)),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert


def require_dovecot() -> None:
    if DOVECOT.exists():
        return
    msg = (
        f"Dovecot is not installed ({DOVECOT} missing); "
        "install it with `apt-get install dovecot-imapd` (make test does this as root)"
    )
    require_peer("Dovecot", msg)


@contextlib.contextmanager
def run_dovecot(*, tls: bool = False) -> Iterator[Dovecot]:
    """A running Dovecot; with `tls`, also STARTTLS and an implicit-TLS port (see module doc)."""
    require_dovecot()
    if tls:
        require_openssl()
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
        tls_port = _free_port() if tls else None
        # Read by Dovecot's master process (root or the test user) when it parses the config.
        cert = make_cert(root) if tls else None
        conf = root / "dovecot.conf"
        conf.write_text(_config(root, port, uid, gid, login_user, internal_user, tls_port, cert))
        proc = subprocess.Popen(
            [str(DOVECOT), "-F", "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_ready("127.0.0.1", port, proc, root)
            if tls_port is not None and cert is not None:
                _wait_tls_ready("127.0.0.1", tls_port, cert)
            yield Dovecot("127.0.0.1", port, USER, PASSWORD, root, tls_port, cert)
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
    return dovecot_server.for_user(_test_user(request))


@pytest.fixture(scope="module")
def dovecot_tls_server() -> Iterator[Dovecot]:
    with run_dovecot(tls=True) as server:
        yield server


@pytest.fixture
def dovecot_tls(dovecot_tls_server: Dovecot, request: pytest.FixtureRequest) -> Dovecot:
    """Like `dovecot`, on the TLS instance (STARTTLS on .port, implicit TLS on .tls_port)."""
    return dovecot_tls_server.for_user(_test_user(request))


def _test_user(request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    return name or "library"
