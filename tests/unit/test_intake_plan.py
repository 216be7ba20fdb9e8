"""Intake's pure planning: which recipients become texts, duplicates, kinds, cost lint."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from bridge.config import TenantConfig, load_config_text
from bridge.emailparse import ParsedNotice
from bridge.intake import (
    AcceptPlan,
    Recipient,
    Rejected,
    accepted_lines,
    is_urgent,
    plan_accept,
    thread_kind,
    thread_refs,
)
from bridge.model import EnqueueResult
from bridge.policy import duplicate_key
from tests.conftest import BASE, merge


def _tenant(**over: Any) -> TenantConfig:
    tenant = {**BASE["tenants"][0], **over}
    return load_config_text(yaml.safe_dump(merge(BASE, {"tenants": [tenant]}))).tenants[0]


def _notice(text: str = "Your hold is ready.", **over: Any) -> ParsedNotice:
    fields: dict[str, Any] = {
        "text": text,
        "subject": "Hold ready",
        "message_id": "<n1@ils>",
        "in_reply_to": None,
        "references": (),
        "from_addr": "ils@riverside.example.org",
        "auto_submitted": None,
        "headers": {},
    }
    fields.update(over)
    return ParsedNotice(**fields)


A = Recipient("2025550143@sms.example.org", "+12025550143")
A2 = Recipient("+12025550143@sms.example.org", "+12025550143")  # same number, other spelling
B = Recipient("2025550188@sms.example.org", "+12025550188")


def _plan(
    recipients: list[Recipient], notice: ParsedNotice | None = None, kind: str = "notice"
) -> AcceptPlan:
    return plan_accept(
        _tenant(), "ils@riverside.example.org", recipients, notice or _notice(), kind, "12025550100"
    )


def test_one_text_per_number_in_rcpt_order() -> None:
    plan = _plan([B, A, A2])
    assert [i.msisdn for i in plan.items] == ["+12025550188", "+12025550143"]
    # the first spelling is the one kept as the text's recipient address
    assert plan.items[1].rcpt_addr == A.address


def test_items_carry_the_notice_and_envelope() -> None:
    (item,) = _plan([A]).items
    assert item.tenant_id == "riverside"
    assert item.source_addr == "12025550100"
    assert item.envelope_from == "ils@riverside.example.org"
    assert (item.message_id, item.subject, item.body) == (
        "<n1@ils>",
        "Hold ready",
        "Your hold is ready.",
    )
    assert item.kind == "notice" and not item.urgent


def test_duplicate_key_per_number_same_as_policy() -> None:
    notice = _notice("Your  hold\nis READY.")
    plan = _plan([A, B], notice)
    assert [i.dup_key for i in plan.items] == [
        duplicate_key("riverside", A.msisdn, notice.text),
        duplicate_key("riverside", B.msisdn, notice.text),
    ]
    assert plan.items[0].dup_key != plan.items[1].dup_key


def test_staff_reply_has_no_duplicate_key() -> None:
    (item,) = _plan([A], kind="reply").items
    assert item.kind == "reply" and item.dup_key is None


def test_gsm7_single_segment_has_no_lint() -> None:
    assert _plan([A, B]).lint == ()


def test_ucs2_notice_gets_one_lint_row_per_text() -> None:
    plan = _plan([A, A2, B], _notice("Your hold \u201cDune\u201d is ready."))
    assert [row.item_index for row in plan.lint] == [0, 1]
    row = plan.lint[0]
    assert row.coding == "ucs2" and row.segments == 1
    assert row.culprits == "\u201c\u201d"
    assert row.template.startswith("Hold ready | Your hold")


def test_long_gsm7_notice_is_linted_for_segments() -> None:
    (row,) = _plan([A], _notice("x" * 161)).lint
    assert (row.coding, row.segments) == ("gsm7", 2)


@pytest.mark.parametrize(
    ("value", "urgent"),
    [("yes", True), ("1", True), ("no", False), ("0", False), ("False", False), ("", False)],
)
def test_urgent_header(value: str, urgent: bool) -> None:
    tenant = _tenant(urgent_header="X-Urgent")
    notice = _notice(headers={"x-urgent": value})
    assert is_urgent(tenant, notice) is urgent
    plan = plan_accept(tenant, "", [A], notice, "notice", "12025550100")
    assert plan.items[0].urgent is urgent


def test_urgent_header_absent_or_not_configured() -> None:
    assert not is_urgent(_tenant(urgent_header="X-Urgent"), _notice())
    assert not is_urgent(_tenant(), _notice(headers={"x-urgent": "yes"}))


def test_thread_refs_in_reply_to_first() -> None:
    notice = _notice(in_reply_to="<r@bridge>", references=("<a@x>", "<r@bridge>"))
    assert thread_refs(notice) == ["<r@bridge>", "<a@x>", "<r@bridge>"]
    assert thread_refs(_notice()) == []


def test_thread_kind() -> None:
    tenant = _tenant()
    assert thread_kind(tenant, _notice(), None) == "notice"
    assert thread_kind(tenant, _notice(), ("riverside", A.msisdn)) == "reply"
    assert thread_kind(tenant, _notice(auto_submitted="no"), ("riverside", A.msisdn)) == "reply"


def test_thread_kind_refuses_auto_replies_and_other_libraries() -> None:
    tenant = _tenant()
    with pytest.raises(Rejected) as auto:
        thread_kind(tenant, _notice(auto_submitted="auto-replied"), ("riverside", A.msisdn))
    assert (auto.value.code, auto.value.status) == (550, "5.7.1")
    assert "Auto-Submitted" in auto.value.text
    with pytest.raises(Rejected) as other:
        thread_kind(tenant, _notice(), ("ashland", A.msisdn))
    assert (other.value.code, other.value.status) == (550, "5.7.1")
    assert "another library" in other.value.text


def test_accepted_lines_mask_numbers_and_name_duplicates() -> None:
    plan = _plan([A, B])
    lines = accepted_lines(
        plan, [EnqueueResult("Q1", False), EnqueueResult("Q0", True)], "riverside", "smtp"
    )
    assert lines[0].startswith("accepted queue_id=Q1 tenant=riverside via=smtp to=")
    assert "2025550143" not in lines[0]
    assert lines[0].endswith("message_id=<n1@ils> chars=19")
    assert lines[1].startswith("duplicate of queue_id=Q0")
    assert lines[1].endswith("duplicate=yes: not sent again")


def test_network_tenants_follow_a_reload() -> None:
    from typing import cast

    from bridge.intake import Intake
    from bridge.store import Store

    base = {**BASE["tenants"][0], "networks": ["192.0.2.0/24"]}
    cfg = load_config_text(yaml.safe_dump(merge(BASE, {"tenants": [base]})))
    intake = Intake(cfg, cast(Store, object()))
    assert [t.id for t in intake.network_tenants("192.0.2.7")] == ["riverside"]
    assert intake.network_tenants("198.51.100.1") == []
    assert intake.network_tenants("not an address") == []
    moved = {**base, "networks": ["198.51.100.0/24"]}
    intake.reload(load_config_text(yaml.safe_dump(merge(BASE, {"tenants": [moved]}))))
    assert intake.network_tenants("192.0.2.7") == []
    assert [t.id for t in intake.network_tenants("198.51.100.1")] == ["riverside"]


def test_sms_domains_follow_a_reload() -> None:
    from typing import cast

    from bridge.intake import Intake
    from bridge.store import Store

    cfg = load_config_text(yaml.safe_dump(BASE))
    intake = Intake(cfg, cast(Store, object()))
    tenant = cfg.tenants[0]
    assert intake.recipient(tenant, "2025550143@sms.example.org").msisdn == "+12025550143"
    with pytest.raises(Rejected, match=r"sms\.example\.net is not an SMS domain"):
        intake.recipient(tenant, "2025550143@sms.example.net")
    moved = merge(BASE, {"smtp": {"domains": ["sms.example.net"]}})
    intake.reload(load_config_text(yaml.safe_dump(moved)))
    assert intake.recipient(tenant, "2025550143@sms.example.net").msisdn == "+12025550143"
    with pytest.raises(Rejected, match=r"sms\.example\.org is not an SMS domain"):
        intake.recipient(tenant, "2025550143@sms.example.org")


async def test_text_options_follow_the_tenant_configuration() -> None:
    from typing import cast

    from bridge.intake import Intake
    from bridge.store import Store

    raw = (
        b"From: ils@riverside.example.org\r\nSubject: Hold ready\r\n"
        b"Content-Type: text/plain\r\n\r\nYour hold is ready.\r\n"
    )
    cfg = load_config_text(yaml.safe_dump(BASE))
    intake = Intake(cfg, cast(Store, object()))
    assert (await intake.parse(cfg.tenants[0], raw)).text == "Your hold is ready."
    prepend = {**BASE["tenants"][0], "subject": "prepend"}
    changed = load_config_text(yaml.safe_dump(merge(BASE, {"tenants": [prepend]})))
    # A tenant configuration the intake has not seen (a reload on its way): its own options.
    assert (await intake.parse(changed.tenants[0], raw)).text == "Hold ready\nYour hold is ready."
    intake.reload(changed)
    assert (await intake.parse(changed.tenants[0], raw)).text == "Hold ready\nYour hold is ready."
    assert (await intake.parse(cfg.tenants[0], raw)).text == "Your hold is ready."
