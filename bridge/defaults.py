"""Every default and limit in one place.

config.example.yaml repeats these values, commented, so an operator sees them without reading
code; `tests/unit/test_config.py` checks the two agree.
"""

from __future__ import annotations

from typing import Final

# --- process -------------------------------------------------------------------------------------
# run.event_loop: the standard library's loop unless uvloop is asked for (bridge/eventloop.py).
EVENT_LOOP: Final = "asyncio"

# --- SMTP intake ---------------------------------------------------------------------------------
SMTP_LISTEN = "127.0.0.1:2525"
# RFC 5321 §4.5.3.1.7 asks servers to take at least 64 KiB; notices are a few KiB, and an HTML
# notice with inline CSS rarely passes 100 KiB. 1 MiB leaves room without inviting abuse.
SMTP_MAX_MESSAGE_BYTES = 1_048_576
# RFC 5321 §4.5.3.1.8 requires accepting at least 100 recipients; a consortium's ILS batches
# are far smaller, so we accept exactly the RFC minimum.
SMTP_MAX_RECIPIENTS = 100
SMTP_MAX_CONNECTIONS = 100
# Postfix's smtpd_client_connection_count_limit (anvil(8)) is half its process limit. An ILS
# sends over one or a few connections (a busy one over a dozen or so); 20 per address leaves
# it that room while one runaway or hostile client cannot take more than a fifth of the slots.
SMTP_MAX_CONNECTIONS_PER_ADDRESS = 20
# Clients from no tenant's networks that have not authenticated share at most this many of
# max_connections; the rest are kept for the libraries' own networks (and logged-in clients).
SMTP_MAX_CONNECTIONS_OUTSIDE_NETWORKS = 20
# RFC 5321 §4.5.3.2.7 suggests a 5-minute server timeout between commands; it applies inside a
# transaction (after MAIL), where a slow ILS may be streaming a large batch.
SMTP_IDLE_TIMEOUT_S = 300.0
# Before MAIL nothing is at stake yet: an ILS sends EHLO and MAIL at once, and a client that
# sits silent only holds a slot (Postfix's postscreen and stress mode cut this short too).
SMTP_IDLE_TIMEOUT_BEFORE_MAIL_S = 30.0
# Under stress (STRESS_README: smtpd_timeout = ${stress?{10}:{300}}s) the wait before MAIL
# drops to this. "Stress" is three quarters of max_connections in use, or the strangers'
# share full.
SMTP_STRESS_TIMEOUT_S = 10.0
SMTP_STRESS_FRACTION = 0.75
# Above this many queued SMS, new mail is deferred with 452 4.3.1 (RFC 3463 "mail system full")
# so the ILS retries later instead of the store growing without bound.
SMTP_MAX_BACKLOG = 100_000
# AUTH attempts are slowed down by the failures on the books for the client's network (/24 or
# /64) and for the login: with n failures an attempt waits min(n * STEP, MAX) seconds, and
# attempts on one network or login take turns. An attempt that would wait longer than MAX is
# answered 454 4.7.0 at once.
AUTH_FAILURE_DELAY_STEP_S = 1.0
AUTH_FAILURE_DELAY_MAX_S = 30.0
# Failures are forgotten gradually: a network's or login's count halves every 15 minutes.
AUTH_FAILURE_HALF_LIFE_S = 900.0
AUTH_PREFIX_BITS_V4 = 24
AUTH_PREFIX_BITS_V6 = 64
# Networks and logins remembered (each table); past this the least-failing entry is replaced
# and its count inherited, so churning through addresses never resets a delay.
AUTH_THROTTLE_ENTRIES = 4096
# Failures across all clients (decaying like the rest) before every new attempt is delayed
# too: the budget against guessing spread over more networks and logins than we remember.
AUTH_GLOBAL_FREE_FAILURES = 100.0
# scrypt checks run in this many worker threads (one per core is enough: they are CPU-bound);
# at most AUTH_VERIFY_QUEUE more may wait, the rest get 454 4.7.0.
AUTH_PARALLEL_CHECKS = 2
AUTH_VERIFY_QUEUE = 16
# Same Message-ID to the same number inside this window is a client retry after a lost 250.
DEDUP_WINDOW_S = 24 * 3600.0

# --- SMPP ----------------------------------------------------------------------------------------
SMPP_HOST = "127.0.0.1"
SMPP_PORT = 2775
SMPP_WINDOW = 10
# deliver_sm (receipts, patron replies) handled at once. Beyond it the session stops reading,
# so a carrier's burst waits in TCP rather than queueing at the store ahead of the libraries'
# SMTP commits. 32 fills a store group commit and far exceeds what any carrier's own window
# keeps outstanding (typically 1-10), so a well-behaved SMSC never meets it.
SMPP_INBOUND_WINDOW = 32
SMPP_MAX_TPS = 10.0
SMPP_ENQUIRE_LINK_S = 30.0
SMPP_ENQUIRE_LINK_TIMEOUT_S = 10.0
SMPP_RESPONSE_TIMEOUT_S = 30.0
SMPP_RECONNECT_MIN_S = 1.0
SMPP_RECONNECT_MAX_S = 60.0
SMPP_THROTTLE_RECOVERY_S = 30.0
SMPP_MAX_AGE_S = 24 * 3600.0
# Attempts at one message before it is failed (temporary errors and response timeouts).
SMPP_MAX_ATTEMPTS = 10
SMPP_RETRY_MIN_S = 5.0
SMPP_RETRY_MAX_S = 600.0
SMPP_DRAIN_TIMEOUT_S = 10.0
# A submitted text with no final receipt by then is `unconfirmed`; the same time goes out as the
# submit_sm validity_period, so the carrier stops trying when we stop waiting. Carriers' default
# validity is commonly 48-72 h; library notices (a hold on the shelf for a few days) lose their
# use quickly, so the shorter end.
SMPP_RECEIPT_TIMEOUT_S = 48 * 3600.0
# "all" (registered_delivery 1), "failures" (2) or "none" (0): SMPP 3.4 §5.2.17.
SMPP_REGISTERED_DELIVERY: Final = "all"
SMPP_SEND_VALIDITY_PERIOD = True
# No receipt on this bind while at least this many texts that asked for one went out, the oldest
# of them this long ago: the carrier has probably stopped sending receipts (warning + metric).
SMPP_RECEIPTS_MISSING_AFTER_SUBMITS = 20
SMPP_RECEIPTS_MISSING_AFTER_S = 30 * 60.0

# --- store ---------------------------------------------------------------------------------------
STORE_PATH = "var/sms-bridge.db"
STORE_LEASE_S = 60.0

# --- privacy and reports --------------------------------------------------------------------------
# Message text is kept only briefly (staff may need it to answer a bounce); the record of who was
# texted when lasts longer (receipts can arrive days later, reports need a season's history).
PRIVACY_RETAIN_BODIES_DAYS = 7.0
PRIVACY_RETAIN_METADATA_DAYS = 90.0
REPORT_EVERY_DAYS = 7.0
MAINTENANCE_EVERY_S = 3600.0

# --- outbound mail -------------------------------------------------------------------------------
MAIL_MAILDIR = "var/mail"
MAIL_TIMEOUT_S = 30.0
MAIL_MAX_ATTEMPTS = 20
MAIL_RETRY_MIN_S = 30.0
MAIL_RETRY_MAX_S = 3600.0
# mail.verp_secret, when given, is at least this long (an HMAC key; `openssl rand -hex 32`).
VERP_SECRET_MIN_CHARS = 16

# --- inbound (MO, receipts) ----------------------------------------------------------------------
INBOUND_REPLY_WINDOW_S = 30 * 24 * 3600.0
INBOUND_UNKNOWN_REPLY_TEXT = (
    "This number sends library notices and cannot read replies. Please contact your library."
)
INBOUND_DEDUP_WINDOW_S = 600.0
INBOUND_REASSEMBLY_TIMEOUT_S = 300.0
INBOUND_RECEIPT_MATCH_DELAY_S = 5.0
INBOUND_RECEIPT_HOLD_S = 7 * 24 * 3600.0

# --- tenants -------------------------------------------------------------------------------------
TENANT_REGION = "US"
TENANT_MAX_SEGMENTS = 6

# --- compliance ---------------------------------------------------------------------------------
# Quiet hours: nothing is sent between 21:00 and 09:00 in the library's time zone.
QUIET_START = "21:00"
QUIET_END = "09:00"
QUIET_TIMEZONE = "America/New_York"
DUPLICATE_WINDOW_S = 12 * 3600.0
# CTIA Messaging Principles' standard words, plus the FCC 2024 TCPA order's list.
OPTOUT_KEYWORDS = (
    "STOP",
    "STOPALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "REVOKE",
    "OPTOUT",
    "OPT-OUT",
)
OPTIN_KEYWORDS = ("START", "UNSTOP", "YES", "SUBSCRIBE")
HELP_KEYWORDS = ("HELP", "INFO")
PROGRAM_NAME = "Library text notices"
HELP_CONTACT = "contact your library"

FIRST_CONTACT_FOOTER = "Reply STOP to opt out, HELP for help."
FREQUENCY_TEXT = "Msg frequency varies"

# --- IMAP intake --------------------------------------------------------------------------------
IMAP_ERROR_FOLDER = "sms-bridge-errors"
IMAP_POLL_S = 60.0
IMAP_IDLE_RENEW_S = 25 * 60.0
IMAP_TIMEOUT_S = 60.0
IMAP_RECONNECT_MIN_S = 1.0
IMAP_RECONNECT_MAX_S = 300.0

# --- admin HTTP listener -------------------------------------------------------------------------
ADMIN_LISTEN = "127.0.0.1:9125"

# --- several instances on one PostgreSQL database (bridge/ratebudget.py) -------------------------
# Not configurable: every instance must use the same values. Each one heartbeats every
# BEAT_EVERY_S and counts as alive while its last beat is younger than ALIVE_S.
HEARTBEAT_BEAT_EVERY_S = 1.0
# Three missed beats: a busy event loop or one slow commit is not a death.
HEARTBEAT_ALIVE_S = 3.0
# Two beats for every peer to see a newcomer, plus the carrier's one-second window.
HEARTBEAT_SETTLE_S = 2 * HEARTBEAT_BEAT_EVERY_S + 1.0

# --- dispatcher ----------------------------------------------------------------------------------
DISPATCH_BATCH = 50
DISPATCH_IDLE_POLL_S = 0.5

# --- notice parsing (SMTP and IMAP intake) -------------------------------------------------------
# Parsing runs in worker threads, never on the event loop; these bounds keep each parse linear in
# its input and short, so the loop (SMPP enquire_link, the systemd watchdog, other libraries'
# sessions) keeps turning whatever a notice contains. A notice over a limit is refused with
# `554 5.6.0` (over SMTP) or bounced (IMAP) with a sentence saying what to change.
# Threads, not processes: a parse is a few hundred microseconds and a process hop would cost
# more than the parse (see bridge/intake.py). Two cores; more threads only thin the loop's share.
PARSE_WORKERS = 4
# A notice this small is parsed on the loop itself: its worst case (about 2.5 ms, measured on
# pathological HTML) is shorter than the 5 ms GIL switch interval a worker thread holds the
# interpreter for anyway, and the hand-off to a thread would cost more than the parse. Typical ILS
# notices are 0.4-2 KB.
PARSE_INLINE_MAX_BYTES = 2048
# Wall-clock budget for one parse, waiting for a worker included. The bounds below keep the worst
# parse near a second on an idle machine; past this the machine is overloaded, so the answer is
# `451 4.3.0` (retry later), not a refusal (see Intake.parse).
PARSE_TIME_BUDGET_S = 15.0
# Header section and one header field (folded lines included). RFC 5322 §2.1.1 caps a line at 998
# octets; a long References or To field in a thread stays well under these.
PARSE_MAX_HEADER_BYTES = 262_144
PARSE_MAX_HEADER_FIELD_BYTES = 32_768
# Multipart sections (each adds a boundary the stdlib parser checks every line against, so the
# cost of a message is its line count times this) and MIME parts in all.
PARSE_MAX_MULTIPARTS = 16
PARSE_MAX_MIME_PARTS = 100
# Nested <blockquote> levels in an HTML body (each level prefixes its lines with "> ").
PARSE_MAX_HTML_QUOTE_DEPTH = 50
