"""SMPP 3.4 command_status values (§5.1.3), their names, plain-words descriptions and classes.

The rest of the bridge never compares raw integers: it calls :func:`classify` to decide whether a
result is final, worth a retry, a signal to slow down, or a sign that the session must rebind.
"""

from __future__ import annotations

from typing import Final, Literal

StatusClass = Literal["ok", "temporary", "throttled", "rebind", "permanent"]

# SMPP 3.4 §5.1.3, table 5-2 (complete).
ESME_ROK: Final = 0x00000000
ESME_RINVMSGLEN: Final = 0x00000001
ESME_RINVCMDLEN: Final = 0x00000002
ESME_RINVCMDID: Final = 0x00000003
ESME_RINVBNDSTS: Final = 0x00000004
ESME_RALYBND: Final = 0x00000005
ESME_RINVPRTFLG: Final = 0x00000006
ESME_RINVREGDLVFLG: Final = 0x00000007
ESME_RSYSERR: Final = 0x00000008
ESME_RINVSRCADR: Final = 0x0000000A
ESME_RINVDSTADR: Final = 0x0000000B
ESME_RINVMSGID: Final = 0x0000000C
ESME_RBINDFAIL: Final = 0x0000000D
ESME_RINVPASWD: Final = 0x0000000E
ESME_RINVSYSID: Final = 0x0000000F
ESME_RCANCELFAIL: Final = 0x00000011
ESME_RREPLACEFAIL: Final = 0x00000013
ESME_RMSGQFUL: Final = 0x00000014
ESME_RINVSERTYP: Final = 0x00000015
ESME_RINVNUMDESTS: Final = 0x00000033
ESME_RINVDLNAME: Final = 0x00000034
ESME_RINVDESTFLAG: Final = 0x00000040
ESME_RINVSUBREP: Final = 0x00000042
ESME_RINVESMCLASS: Final = 0x00000043
ESME_RCNTSUBDL: Final = 0x00000044
ESME_RSUBMITFAIL: Final = 0x00000045
ESME_RINVSRCTON: Final = 0x00000048
ESME_RINVSRCNPI: Final = 0x00000049
ESME_RINVDSTTON: Final = 0x00000050
ESME_RINVDSTNPI: Final = 0x00000051
ESME_RINVSYSTYP: Final = 0x00000053
ESME_RINVREPFLAG: Final = 0x00000054
ESME_RINVNUMMSGS: Final = 0x00000055
ESME_RTHROTTLED: Final = 0x00000058
ESME_RINVSCHED: Final = 0x00000061
ESME_RINVEXPIRY: Final = 0x00000062
ESME_RINVDFTMSGID: Final = 0x00000063
ESME_RX_T_APPN: Final = 0x00000064
ESME_RX_P_APPN: Final = 0x00000065
ESME_RX_R_APPN: Final = 0x00000066
ESME_RQUERYFAIL: Final = 0x00000067
ESME_RINVOPTPARSTREAM: Final = 0x000000C0
ESME_ROPTPARNOTALLWD: Final = 0x000000C1
ESME_RINVPARLEN: Final = 0x000000C2
ESME_RMISSINGOPTPARAM: Final = 0x000000C3
ESME_RINVOPTPARAMVAL: Final = 0x000000C4
ESME_RDELIVERYFAILURE: Final = 0x000000FE
ESME_RUNKNOWNERR: Final = 0x000000FF
# Not in SMPP 3.4: SMPP 5.0 §4.7.6 defines it, and 3.4 SMSCs from several vendors send it when
# they cannot handle the data_coding we used.
ESME_RINVDCS: Final = 0x00000104

_NAMES: Final[dict[int, str]] = {
    value: name
    for name, value in globals().items()
    if name.startswith("ESME_R") and isinstance(value, int)
}

_DESCRIPTIONS: Final[dict[int, str]] = {
    ESME_ROK: "accepted by the carrier",
    ESME_RINVMSGLEN: "the carrier rejected the message length",
    ESME_RINVCMDLEN: "the carrier could not read our request (bad length)",
    ESME_RINVCMDID: "the carrier does not support this kind of request",
    ESME_RINVBNDSTS: "the connection to the carrier was not in the right state; reconnecting",
    ESME_RALYBND: "the carrier says we are already connected",
    ESME_RINVPRTFLG: "the carrier rejected the message priority",
    ESME_RINVREGDLVFLG: "the carrier rejected the delivery receipt request",
    ESME_RSYSERR: "the carrier had an internal error; will retry",
    ESME_RINVSRCADR: "the carrier rejected the sender number or name",
    ESME_RINVDSTADR: "the carrier rejected the destination number",
    ESME_RINVMSGID: "the carrier did not recognise the message id",
    ESME_RBINDFAIL: "the carrier refused the login",
    ESME_RINVPASWD: "the carrier rejected the password",
    ESME_RINVSYSID: "the carrier rejected the account name (system_id)",
    ESME_RCANCELFAIL: "the carrier could not cancel the message",
    ESME_RREPLACEFAIL: "the carrier could not replace the message",
    ESME_RMSGQFUL: "the carrier's queue is full; will retry",
    ESME_RINVSERTYP: "the carrier rejected the service type",
    ESME_RINVNUMDESTS: "the carrier rejected the number of destinations",
    ESME_RINVDLNAME: "the carrier rejected the distribution list name",
    ESME_RINVDESTFLAG: "the carrier rejected the destination flag",
    ESME_RINVSUBREP: "the carrier rejected the replace request",
    ESME_RINVESMCLASS: "the carrier rejected the message options (esm_class)",
    ESME_RCNTSUBDL: "the carrier cannot send to a distribution list",
    ESME_RSUBMITFAIL: "the carrier refused the message",
    ESME_RINVSRCTON: "the carrier rejected the sender number type",
    ESME_RINVSRCNPI: "the carrier rejected the sender numbering plan",
    ESME_RINVDSTTON: "the carrier rejected the destination number type",
    ESME_RINVDSTNPI: "the carrier rejected the destination numbering plan",
    ESME_RINVSYSTYP: "the carrier rejected the system type",
    ESME_RINVREPFLAG: "the carrier rejected the replace flag",
    ESME_RINVNUMMSGS: "the carrier rejected the number of messages",
    ESME_RTHROTTLED: "the carrier asked us to send more slowly; will retry",
    ESME_RINVSCHED: "the carrier rejected the scheduled delivery time",
    ESME_RINVEXPIRY: "the carrier rejected the expiry time",
    ESME_RINVDFTMSGID: "the carrier rejected the predefined message id",
    ESME_RX_T_APPN: "the carrier had a temporary problem; will retry",
    ESME_RX_P_APPN: "the carrier permanently rejected the message",
    ESME_RX_R_APPN: "the carrier rejected the message",
    ESME_RQUERYFAIL: "the carrier could not look up the message",
    ESME_RINVOPTPARSTREAM: "the carrier could not read the optional parameters",
    ESME_ROPTPARNOTALLWD: "the carrier does not allow one of the optional parameters",
    ESME_RINVPARLEN: "the carrier rejected an optional parameter length",
    ESME_RMISSINGOPTPARAM: "the carrier expected an optional parameter that was missing",
    ESME_RINVOPTPARAMVAL: "the carrier rejected an optional parameter value",
    ESME_RDELIVERYFAILURE: "the carrier could not deliver the message",
    ESME_RUNKNOWNERR: "the carrier reported an unknown error",
    ESME_RINVDCS: "the carrier does not support the message's character set",
}

# SMPP 3.4 gives no classes; these follow carrier practice (see ARCHITECTURE.md "Facts").
_TEMPORARY: Final = frozenset({ESME_RSYSERR, ESME_RMSGQFUL, ESME_RX_T_APPN})
# 0x04: the SMSC thinks we are not bound (e.g. it restarted behind a proxy): reconnect and resend.
# 0x05 in answer to a submit means the same session confusion; treating it as permanent would
# fail a patron's notice because of a session glitch, so it also means "rebind and retry".
_REBIND: Final = frozenset({ESME_RINVBNDSTS, ESME_RALYBND})


def status_name(code: int) -> str:
    """``ESME_RTHROTTLED`` for a known code, else the code as ``0x00000400``."""
    return _NAMES.get(code, f"0x{code:08X}")


def describe(code: int) -> str:
    """Plain words for library staff (status pages, bounce messages)."""
    text = _DESCRIPTIONS.get(code)
    if text is not None:
        return text
    if 0x400 <= code <= 0x4FF:
        # §5.1.3: 0x400-0x4FF are reserved for SMSC vendor-specific errors.
        return f"the carrier reported its own error code 0x{code:08X}"
    return f"the carrier reported error code 0x{code:08X}"


def classify(code: int) -> StatusClass:
    """What the caller should do with a submit result carrying this status."""
    if code == ESME_ROK:
        return "ok"
    if code == ESME_RTHROTTLED:
        return "throttled"
    if code in _TEMPORARY:
        return "temporary"
    if code in _REBIND:
        return "rebind"
    return "permanent"


def is_retryable(code: int) -> bool:
    """True for every class where sending the same message again later is right."""
    return classify(code) in ("temporary", "throttled", "rebind")
