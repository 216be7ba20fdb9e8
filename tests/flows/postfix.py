"""A throw-away Postfix for flow tests: the library's mail server, as libraries really run it.

One instance per test module, in its own configuration directory (`postfix -c <dir> start`),
with its own queue and data directories, listening on a loopback port only:

* smtpd on `Postfix.port` takes mail from the ILS (smtplib in the tests) and from the bridge
  (`mail.relay`), both from 127.0.0.0/8 (`mynetworks`), as a library's relay would;
* `transport_maps` send the SMS domain to `smtp:[127.0.0.1]:<bridge_port>`: one fixed port per
  module that every test's bridge listens on (`smtp.listen`), so the map never changes and no
  reload is needed between tests;
* virtual(8) delivers riverside.example.org (any local part, into one catch-all Maildir;
  `Postfix.mailbox` picks a recipient's messages by Delivered-To, so tests of a module that
  use local parts of their own do not see each other's mail) and ashland.example.org (only
  `desk@`: other local parts are accepted at RCPT, then bounced by virtual(8) as "user
  unknown", like a mailbox server behind the library's relay);
* the log goes to `maillog_file` (postlogd(8)): containers have no syslog.

As root (CI), Postfix wants its queue owned by root with `postfix`-owned subdirectories and the
virtual agent writes as `nobody`; the instance then lives in a world-readable directory outside
pytest's tmp_path (that one sits in a 0700 directory), as in tests/flows/dovecot.py.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.flows.proc import free_port
from tests.peers import require_peer
from tests.waiting import eventually_blocking

SBIN = Path(os.environ.get("SMS_BRIDGE_POSTFIX_SBIN", "/usr/sbin"))
POSTFIX = SBIN / "postfix"
SMS_DOMAIN = "sms.example.org"
START_TIMEOUT_S = 20.0
CMD_TIMEOUT_S = 30.0

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.riverside.example.org
mydomain = riverside.example.org
myorigin = riverside.example.org
mydestination =
local_recipient_maps =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
maillog_file = {root}/maillog
# postlogd(8) writes only below these (default /var, /dev/stdout).
maillog_file_prefixes = {root}
syslog_name = postfix-sms-bridge-test
biff = no
append_dot_mydomain = no
smtputf8_enable = no
# No DNS at all: every next hop here is a bracketed address or a local delivery.
smtp_dns_support_level = disabled
smtp_host_lookup = native
# A new connection per delivery: each test starts its own bridge on the same port.
smtp_connection_cache_on_demand = no
transport_maps = texthash:{root}/transport
relay_domains = {sms_domain}
virtual_mailbox_domains = riverside.example.org, ashland.example.org
virtual_mailbox_maps = texthash:{root}/vmailbox
virtual_mailbox_base = {root}/mail
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_minimum_uid = 1
# Accept any local part at RCPT; virtual(8) bounces the unknown ones afterwards (a DSN to the
# envelope sender), as a library relay in front of a separate mailbox server does.
smtpd_reject_unlisted_recipient = no
# Deferred mail waits longer than any test: only `postqueue -f` (Postfix.flush) sends it on,
# so the deferral test shows the flush working, not a lucky queue run.
queue_run_delay = 300s
minimal_backoff_time = 300s
maximal_backoff_time = 300s
# Postfix's default 5 days: a refused text bounces at once, only a deferred one waits.
delay_warning_time = 0h
"""

MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

# Only desk@ at ashland; riverside takes any local part into one Maildir (see Postfix.mailbox).
VMAILBOX = """\
desk@ashland.example.org ashland/desk/
@riverside.example.org riverside/
"""


@dataclass
class Postfix:
    root: Path
    port: int
    bridge_port: int  # where the SMS domain is delivered: every test's bridge listens here

    @property
    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def _run(self, *argv: str) -> str:
        done = subprocess.run(
            [str(SBIN / argv[0]), "-c", str(self.root), *argv[1:]],
            capture_output=True,
            text=True,
            timeout=CMD_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr}")
        return done.stdout

    def flush(self) -> None:
        """`postqueue -f`: deliver the deferred mail now, dead destinations included."""
        self._run("postqueue", "-f")

    def queue(self) -> list[dict[str, object]]:
        """The queue as `postqueue -j` lists it (one JSON object per message)."""
        return [json.loads(line) for line in self._run("postqueue", "-j").splitlines() if line]

    def clear_queue(self) -> None:
        self._run("postsuper", "-d", "ALL")

    def mailbox(self, address: str) -> list[EmailMessage]:
        """Every message virtual(8) delivered to `address`, oldest first. riverside.example.org
        is one catch-all Maildir; virtual(8)'s Delivered-To header tells the owners apart, so
        each test can use local parts of its own."""
        domain = address.split("@", 1)[1].split(".", 1)[0]
        box = self.root / "mail" / domain
        if domain == "ashland":
            box = box / address.split("@", 1)[0]
        files = [f for sub in ("new", "cur") if (box / sub).is_dir() for f in (box / sub).iterdir()]
        files.sort(key=lambda f: f.name)
        out = []
        for f in files:
            msg = email.message_from_bytes(f.read_bytes(), policy=email.policy.default)
            assert isinstance(msg, EmailMessage)
            if str(msg.get("Delivered-To", "")).lower() == address.lower():
                out.append(msg)
        return out

    def wait_mail(self, address: str, n: int = 1, timeout: float = 15.0) -> list[EmailMessage]:
        """Poll the Maildir until it holds n messages; fail with the log tail when it does not."""
        got: list[EmailMessage] = []

        def arrived() -> list[EmailMessage] | None:
            nonlocal got
            got = self.mailbox(address)
            return got if len(got) >= n else None

        def said() -> str:
            tail = "\n".join(self.log.splitlines()[-30:])
            return f"{n} messages for {address} (got {len(got)}); maillog:\n{tail}"

        return eventually_blocking(arrived, timeout, said)

    def wait_log(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """Poll the maillog for a regular expression (Postfix states such as status=deferred)."""
        rx = re.compile(pattern)
        return eventually_blocking(
            lambda: rx.search(self.log),
            timeout,
            lambda: f"{pattern!r} in the maillog:\n" + "\n".join(self.log.splitlines()[-30:]),
        )


def require_postfix() -> None:
    if POSTFIX.exists() and os.geteuid() == 0:
        return
    if not POSTFIX.exists():
        msg = (
            f"Postfix is not installed ({POSTFIX} missing); install it with "
            "`apt-get install postfix` (make test does this as root)"
        )
    else:
        # postfix(1) start, postsuper and a queue owned by the mail_owner need root.
        msg = "the Postfix flow tests start a private Postfix instance and must run as root"
    require_peer("Postfix", msg)


def _wait_ready(port: int, root: Path) -> None:
    def greets() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.settimeout(3)
                return s.recv(200).startswith(b"220")
        except OSError:
            return False

    def said() -> str:
        log = (root / "maillog").read_text(errors="replace") if root.exists() else ""
        return f"postfix to answer on 127.0.0.1:{port}:\n{log}"

    eventually_blocking(greets, START_TIMEOUT_S, said)


@contextlib.contextmanager
def run_postfix() -> Iterator[Postfix]:
    require_postfix()
    root = Path(tempfile.mkdtemp(prefix="sms-bridge-postfix-"))
    root.chmod(0o755)
    nobody = pwd.getpwnam("nobody")
    port, bridge_port = free_port(), free_port()
    started = False
    try:
        (root / "main.cf").write_text(
            MAIN_CF.format(root=root, sms_domain=SMS_DOMAIN, uid=nobody.pw_uid, gid=nobody.pw_gid)
        )
        (root / "master.cf").write_text(MASTER_CF.format(port=port))
        (root / "transport").write_text(f"{SMS_DOMAIN} smtp:[127.0.0.1]:{bridge_port}\n")
        (root / "vmailbox").write_text(VMAILBOX)
        (root / "mail").mkdir()
        os.chown(root / "mail", nobody.pw_uid, nobody.pw_gid)
        # `postfix start` makes the queue's subdirectories (postfix-script check-fatal).
        (root / "queue").mkdir()
        subprocess.run(
            [str(POSTFIX), "-c", str(root), "start"],
            check=True,
            capture_output=True,
            timeout=CMD_TIMEOUT_S,
        )
        started = True
        _wait_ready(port, root)
        yield Postfix(root, port, bridge_port)
    finally:
        if started:
            subprocess.run(
                [str(POSTFIX), "-c", str(root), "stop"],
                capture_output=True,
                timeout=CMD_TIMEOUT_S,
                check=False,
            )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def postfix_server() -> Iterator[Postfix]:
    with run_postfix() as server:
        yield server


@pytest.fixture
def postfix(postfix_server: Postfix) -> Iterator[Postfix]:
    """The module's Postfix, with an empty queue after each test (no retries leak across)."""
    yield postfix_server
    postfix_server.clear_queue()
    # A flush also forgets destinations marked dead (qmgr's "delivery temporarily
    # suspended"): the next test's bridge on the same port gets a fresh start.
    postfix_server.flush()
