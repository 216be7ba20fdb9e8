from __future__ import annotations

import email
import email.policy

import yaml

from bridge.config import load_config_text
from bridge.reports import build_report, report_mail
from bridge.store.base import LostMail, ReportData
from tests.conftest import BASE


def test_report_lists_failures_optouts_and_costs() -> None:
    data = ReportData(
        states={"delivered": 40, "failed": 2, "expired": 1, "submitted": 3},
        failed=[("+12025550143", "the carrier rejected the destination number", "Hold ready", 0.0)],
        optout_changes=[("+12025550167", True, "STOP", 86400.0)],
        costly=[("Reserva lista | Biblioteca: su reserva", 5, 5, 10, "áó")],
    )
    r = build_report("Riverside Public Library", data, 0.0, 7 * 86400.0)
    assert r.subject == "Text notices for Riverside Public Library: 1970-01-01 to 1970-01-08"
    assert "Notices:     46" in r.text and "Failed:      3" in r.text
    assert "+1 202-555-0143  1970-01-01  Hold ready  - the carrier rejected" in r.text
    assert "+1 202-555-0167  opted out (STOP) on 1970-01-02" in r.text
    assert "characters áó force UCS-2" in r.text
    assert "<td>+1 202-555-0143</td>" in r.html


def test_report_mail_is_multipart_and_auto_generated(tmp_path: object) -> None:
    cfg = load_config_text(yaml.safe_dump(BASE))
    r = build_report("X", ReportData({}, [], [], []), 0.0, 86400.0)
    out = report_mail(cfg, "staff@riverside.example.org", r, 86400.0)
    msg = email.message_from_bytes(out.data, policy=email.policy.default)
    assert out.mail_from == "" and out.rcpt_to == ("staff@riverside.example.org",)
    assert msg.get_content_type() == "multipart/alternative"
    assert msg["Auto-Submitted"] == "auto-generated"


def test_report_lists_lost_replies_and_what_became_of_them() -> None:
    lost = [
        LostMail(
            1,
            "reply",
            "bounced",
            ("circ@riverside.example.org",),
            "riverside",
            "bounced: circ@riverside.example.org: 5.1.1 User unknown",
            3600.0,
            "sent",
        ),
        LostMail(
            2,
            "reply",
            "dead",
            ("circ@riverside.example.org",),
            "riverside",
            "dead letter: permanent 550",
            7200.0,
            None,
        ),
    ]
    r = build_report("R", ReportData({}, [], [], [], lost_mail=lost), 0.0, 86400.0)
    assert "Emails from the bridge that never arrived: 2 (patron replies: 2)" in r.text
    assert "1970-01-01  reply to circ@riverside.example.org  - bounced: circ@" in r.text
    assert "a copy went to the fallback address (sent)" in r.text
    assert "no copy was sent (no fallback address: set tenants[].fallback_to)" in r.text
    assert "<td>dead letter: permanent 550</td>" in r.html


def test_report_counts_and_lists_unconfirmed_apart_from_failures() -> None:
    data = ReportData(
        states={"delivered": 5, "unconfirmed": 2, "submitted": 1},
        failed=[],
        optout_changes=[],
        costly=[],
        unconfirmed=[("+12025550143", "Hold ready", 0.0), ("+12025550167", "Overdue", 3600.0)],
    )
    r = build_report("Riverside Public Library", data, 0.0, 7 * 86400.0)
    assert "Unconfirmed: 2" in r.text and "In progress: 1" in r.text and "Failed:      0" in r.text
    assert "2 texts to these numbers were never confirmed by the carrier" in r.text
    assert "+1 202-555-0143" in r.text and "Overdue" in r.text
    assert "never confirmed by the carrier" in r.html
