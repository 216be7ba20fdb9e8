"""Carrier gateway domains taken as SMS domains: the list, the local-part shapes, the config."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bridge import gateways
from bridge.config import ConfigError
from bridge.intake import Intake, Rejected
from bridge.store import Store
from tests.conftest import MakeConfig


def test_known_expands_in_place_without_duplicates() -> None:
    out = gateways.expand(["texts.example.net", "known", "VTEXT.com."])
    assert out[0] == "texts.example.net"
    assert out[1:] == gateways.KNOWN_GATEWAY_DOMAINS
    assert out.count("vtext.com") == 1


def test_known_list_holds_the_gateways_ils_records_name() -> None:
    # Koha's and Polaris's examples, and Evergreen's seed data, name these.
    for domain in ("vtext.com", "tmomail.net", "txt.att.net", "messaging.sprintpcs.com"):
        assert domain in gateways.KNOWN_GATEWAY_DOMAINS


@pytest.mark.parametrize(
    ("local", "domain", "number"),
    [
        ("2025550143", "vtext.com", "2025550143"),
        ("2025550143.iws", "iwspcs.net", "2025550143"),
        ("2025550143.IWS", "IWSPCS.NET", "2025550143"),
        # a suffix means something only at the gateway that uses it
        ("2025550143.iws", "vtext.com", "2025550143.iws"),
    ],
)
def test_number_part(local: str, domain: str, number: str) -> None:
    assert gateways.number_part(local, domain) == number


def test_config_keeps_the_primary_domain_first(make_config: MakeConfig) -> None:
    cfg = make_config({"smtp": {"gateway_domains": ["known"]}})
    assert cfg.smtp.sms_domains[0] == "sms.example.org"
    assert "tmomail.net" in cfg.smtp.sms_domains
    assert make_config().smtp.sms_domains == ("sms.example.org",)


def test_config_refuses_a_gateway_that_is_not_a_domain(make_config: MakeConfig) -> None:
    with pytest.raises((ConfigError, ValidationError), match="gateway_domains"):
        make_config({"smtp": {"gateway_domains": ["vtext com"]}})


@pytest.mark.parametrize(
    ("address", "msisdn"),
    [
        ("2025550143@vtext.com", "+12025550143"),  # Koha/Polaris: number@carrier-domain
        ("202-555-0143@tmomail.net", "+12025550143"),
        ("12025550143@txt.att.net", "+12025550143"),
        ("14165550123@mms.rogers.com", "+14165550123"),  # Evergreen: 1$number@mms.rogers.com
        ("2025550143.iws@iwspcs.net", "+12025550143"),  # Evergreen: $number.iws@iwspcs.net
    ],
)
async def test_gateway_addresses_become_numbers(
    make_config: MakeConfig, store: Store, address: str, msisdn: str
) -> None:
    cfg = make_config({"smtp": {"gateway_domains": ["known"]}})
    intake = Intake(cfg, store)
    assert intake.recipient(cfg.tenants[0], address).msisdn == msisdn


async def test_gateway_domains_are_refused_unless_configured(
    make_config: MakeConfig, store: Store
) -> None:
    cfg = make_config()
    intake = Intake(cfg, store)
    with pytest.raises(Rejected) as exc:
        intake.recipient(cfg.tenants[0], "2025550143@vtext.com")
    assert exc.value.code == 550 and "not an SMS domain" in exc.value.text
