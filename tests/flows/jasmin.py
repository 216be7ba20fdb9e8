"""A throw-away Jasmin SMS gateway for flow tests, between the bridge and the SMSC simulator.

    bridge (ESME) ──SMPP──► Jasmin smpp-server ──router──► smppc connector ──SMPP──► simulator
                  ◄──────── receipts, MO (MO route: smpps(<bridge system_id>)) ◄──────────

Jasmin runs from its own virtualenv (JASMIN_VENV, default .venv-jasmin, made by
`make jasmin-venv`; its Twisted stack does not belong in the project's environment) as one
`jasmind.py` process with the DLR lookup and DLR thrower in-process (`--enable-dlr-lookup
--enable-dlr-thrower`: the packaged split into dlrd/dlrlookupd daemons is for scale, not
behaviour), HTTP API and interceptor off, every listener on a free loopback port, and
ROOT_PATH pointing at a temporary directory so config, store and logs stay there.

It needs the RabbitMQ (127.0.0.1:5672, guest/guest) and Redis (127.0.0.1:6379) of the
machine. Each instance gets a RabbitMQ vhost of its own (made with rabbitmqctl, deleted after)
and a Redis database number (SMS_BRIDGE_JASMIN_REDIS_DB, default 13), so its queues and DLR
maps meet nobody else's.

Version: Jasmin 0.11.0. 0.11.1 loses every receipt (jookies/jasmin#1199: the submit_sm_resp
listener reads the response off the request PDU, so no DLR map is stored and each receipt
ends as DLRMapNotFound). The routes and users are made through jCli (telnet, plain lines),
as an operator would.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.flows.proc import free_port
from tests.peers import require_peer
from tests.waiting import eventually_blocking

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("JASMIN_VENV", REPO / ".venv-jasmin"))
JASMIND = VENV / "bin" / "jasmind.py"
PYTHON = VENV / "bin" / "python"
# txAMQP ships the AMQP 0-9-1 spec Jasmin loads at start (the sdist's copy is not installed).
AMQP_SPEC = "txamqp/specs/standard/amqp0-9-1.stripped.xml"
RABBITMQCTL = os.environ.get("SMS_BRIDGE_RABBITMQCTL", "rabbitmqctl")
REDIS_DB = int(os.environ.get("SMS_BRIDGE_JASMIN_REDIS_DB", "13"))
START_TIMEOUT_S = 60.0
JCLI_TIMEOUT_S = 15.0

# The bridge binds to Jasmin as this user (Jasmin's smpps system_id is its username).
ESME_USER = "bridge"
ESME_PASSWORD = "secret"
CONNECTOR = "sim"
# Jasmin binds to the simulator with these (SmscSimulator(system_id=..., password=...)).
SIM_SYSTEM_ID = "jasmin"
SIM_PASSWORD = "jasminpw"


@dataclass
class Jasmin:
    root: Path
    smpp_port: int  # Jasmin's SMPP server: the bridge's smpp.port
    jcli_port: int
    sim_port: int

    @property
    def log(self) -> str:
        """Every Jasmin log file, concatenated (messages.log has one line per MT/MO/DLR)."""
        logs = sorted((self.root / "var" / "log" / "jasmin").glob("*.log"))
        return "\n".join(f"== {p.name}\n" + p.read_text(errors="replace") for p in logs)

    def messages_log(self) -> str:
        path = self.root / "var" / "log" / "jasmin" / "messages.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def jcli(self, *lines: str) -> str:
        """Run jCli lines in one session; return everything it printed."""
        with JCli(self.jcli_port) as cli:
            return "".join(cli.cmd(line) for line in lines)

    def connector_state(self) -> str:
        """The connector's session state as `smppccm --list` shows it (BOUND_TRX, NONE, ...)."""
        out = self.jcli("smppccm --list")
        m = re.search(rf"^#{CONNECTOR}\s+\S+\s+(\S+)", out, re.MULTILINE)
        return m.group(1) if m else out


IAC, DONT, DO, WONT, WILL = 255, 254, 253, 252, 251


class JCli:
    """jCli over a plain socket (telnetlib is gone in Python 3.13; jCli sends no options
    worth negotiating). A command's output ends at the next prompt: "jcli : " at top level,
    "> " inside an add/update session."""

    PROMPTS = (b"jcli : ", b"> ")

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=JCLI_TIMEOUT_S)
        self.buf = b""
        # Without authentication jCli prints its banner ("... Session ref: N") and no prompt:
        # the first prompt comes with the first command's answer.
        self._read_until(b"Session ref: ")
        self._read_until(b"\n")
        self.buf = b""

    def __enter__(self) -> JCli:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"quit\r\0")
        self.sock.close()

    def _read_prompt(self) -> str:
        self._read_until(*self.PROMPTS, at_end=True)
        out, self.buf = self.buf.decode(errors="replace"), b""
        return out

    def _read_until(self, *marks: bytes, at_end: bool = False) -> None:
        deadline = time.monotonic() + JCLI_TIMEOUT_S
        while not (self.buf.endswith(marks) if at_end else any(m in self.buf for m in marks)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"jCli: no prompt after {self.buf!r}")
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise TimeoutError(f"jCli: no prompt after {self.buf!r}") from None
            if not chunk:
                raise ConnectionError(f"jCli closed the session after {self.buf!r}")
            self.buf += self._telnet(chunk)

    def _telnet(self, chunk: bytes) -> bytes:
        """Refuse every option the server proposes (RFC 854/855: DO → WONT, WILL → DONT) and
        return the text without the commands. jCli sends its three-byte negotiations in one
        write at the start of the session, so a command is never split across reads."""
        text = bytearray()
        i = 0
        while i < len(chunk):
            if chunk[i] != IAC or i + 1 >= len(chunk):
                text.append(chunk[i])
                i += 1
                continue
            verb = chunk[i + 1]
            if verb in (DO, DONT, WILL, WONT) and i + 2 < len(chunk):
                answer = {DO: WONT, WILL: DONT}.get(verb)
                if answer is not None:
                    self.sock.sendall(bytes([IAC, answer, chunk[i + 2]]))
                i += 3
            else:
                i += 2
        return bytes(text)

    def cmd(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\r\0")
        out = self._read_prompt()
        lowered = out.lower()
        if "error" in lowered or "unknown" in lowered or "incorrect" in lowered:
            raise RuntimeError(f"jCli {line!r}: {out}")
        return out


def _config(ports: dict[str, int], vhost: str, spec: Path) -> str:
    return f"""\
[smpp-server]
id = smpps_test
bind = 127.0.0.1
port = {ports["smpp"]}
billing_feature = False
log_level = DEBUG

[smpp-server-pb]
bind = 127.0.0.1
port = {ports["smpps_pb"]}
authentication = False

[client-management]
bind = 127.0.0.1
port = {ports["cm"]}
authentication = False

[service-smppclient]
log_level = DEBUG

[sm-listener]
log_level = DEBUG
# A text queued while the carrier link is down is retried this often (default 30 s).
submit_retrial_delay_smppc_not_ready = 1

[dlr]
# One receipt per final state, not an extra ACCEPTD receipt made from the submit_sm_resp.
smpp_receipt_on_success_submit_sm_resp = False
dlr_lookup_retry_delay = 1
dlr_lookup_max_retries = 5
log_level = DEBUG

[amqp-broker]
host = 127.0.0.1
port = 5672
vhost = {vhost}
username = guest
password = guest
spec = {spec}

[router]
bind = 127.0.0.1
port = {ports["router"]}
authentication = False
persistence_timer_secs = 0

[deliversm-thrower]
log_level = DEBUG

[dlr-thrower]
dlr_pdu = deliver_sm
retry_delay = 1
log_level = DEBUG

[redis-client]
host = 127.0.0.1
port = 6379
dbid = {REDIS_DB}

[jcli]
bind = 127.0.0.1
port = {ports["jcli"]}
authentication = False
"""


def require_jasmin() -> None:
    problems = []
    if not JASMIND.exists():
        problems.append(f"Jasmin is not installed in {VENV} (run `make jasmin-venv`)")
    if shutil.which(RABBITMQCTL) is None:
        problems.append("rabbitmqctl is missing (apt-get install rabbitmq-server)")
    for name, port in (("RabbitMQ", 5672), ("Redis", 6379)):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        except OSError:
            problems.append(f"{name} is not listening on 127.0.0.1:{port}")
    if not problems:
        return
    msg = "the Jasmin flow tests need: " + "; ".join(problems)
    require_peer("Jasmin", msg)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(
        [RABBITMQCTL, *args], check=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL
    )


def _amqp_spec() -> Path:
    out = subprocess.run(
        [str(PYTHON), "-c", "import txamqp, os; print(os.path.dirname(txamqp.__file__))"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return Path(out.stdout.strip()).parent / AMQP_SPEC


def _wait_listening(port: int, proc: subprocess.Popen[bytes], root: Path) -> None:
    def listening() -> bool:
        if proc.poll() is not None:
            out = (root / "jasmind.out").read_text(errors="replace")
            raise RuntimeError(f"jasmind exited with {proc.returncode}:\n{out}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    eventually_blocking(listening, START_TIMEOUT_S, f"jasmind to listen on {port}")


def configure(j: Jasmin) -> None:
    """What an operator types into jCli: a user for the bridge, a connector to the carrier
    (our simulator), the default MT route to it and the default MO route back to the bridge."""
    j.jcli(
        "group -a",
        "gid libraries",
        "ok",
        "user -a",
        f"username {ESME_USER}",
        f"password {ESME_PASSWORD}",
        "gid libraries",
        f"uid {ESME_USER}",
        "ok",
        "smppccm -a",
        f"cid {CONNECTOR}",
        "host 127.0.0.1",
        f"port {j.sim_port}",
        f"username {SIM_SYSTEM_ID}",
        f"password {SIM_PASSWORD}",
        "bind transceiver",
        "con_fail_delay 1",
        "con_loss_delay 1",
        "submit_throughput 200",
        # The bridge sends E.164 digits with TON 1/NPI 1 and the simulator reads them as
        # such; Jasmin's connector defaults (TON 2 national) would rewrite that.
        "src_ton 1",
        "src_npi 1",
        "dst_ton 1",
        "dst_npi 1",
        "ok",
        f"smppccm -1 {CONNECTOR}",
        "mtrouter -a",
        "type DefaultRoute",
        f"connector smppc({CONNECTOR})",
        "rate 0",
        "ok",
        "morouter -a",
        "type DefaultRoute",
        f"connector smpps({ESME_USER})",
        "ok",
    )


@contextlib.contextmanager
def run_jasmin(sim_port: int) -> Iterator[Jasmin]:
    """A configured Jasmin whose connector points at an SMSC simulator on `sim_port`."""
    require_jasmin()
    root = Path(tempfile.mkdtemp(prefix="sms-bridge-jasmin-"))
    vhost = "sms-bridge-jasmin-" + secrets.token_hex(4)
    ports = {k: free_port() for k in ("smpp", "smpps_pb", "cm", "router", "jcli")}
    proc: subprocess.Popen[bytes] | None = None
    out = None
    try:
        (root / "etc" / "jasmin" / "store").mkdir(parents=True)
        (root / "var" / "log" / "jasmin").mkdir(parents=True)
        cfg = root / "etc" / "jasmin" / "jasmin.cfg"
        cfg.write_text(_config(ports, vhost, _amqp_spec()))
        _rabbitmqctl("add_vhost", vhost)
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        out = (root / "jasmind.out").open("wb")
        env = {**os.environ, "ROOT_PATH": str(root), "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [
                str(PYTHON),
                str(JASMIND),
                "-c",
                str(cfg),
                "--disable-http-api",
                "--enable-dlr-lookup",
                "--enable-dlr-thrower",
            ],
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        _wait_listening(ports["jcli"], proc, root)
        _wait_listening(ports["smpp"], proc, root)
        j = Jasmin(root, ports["smpp"], ports["jcli"], sim_port)
        configure(j)
        yield j
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if out is not None:
            out.close()
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            _rabbitmqctl("delete_vhost", vhost)
        shutil.rmtree(root, ignore_errors=True)
