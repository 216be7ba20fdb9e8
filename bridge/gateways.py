"""Carriers' email-to-text gateway domains, accepted as SMS domains (pure).

Patron records in the ILS often still name the carrier's own gateway: Koha's "SMS cellular
providers" table, Evergreen's `config.sms_carrier.email_gateway` templates and Polaris's
"Mobile Phone Carriers" table all build the address as the patron's number at the carrier's
domain (`2025550143@vtext.com`). As carriers close those gateways, a library can route the
domains to the bridge on its own mail server (a Postfix transport map) and list them in
`smtp.gateway_domains`; every patron keeps getting texts without editing a single record.

The bridge never relays to the carrier's gateway: a notice to `<number>@vtext.com` is texted
through the library's own SMSC account, exactly like one to `<number>@<sms-domain>`.
"""

from __future__ import annotations

from collections.abc import Iterable

# The value in `smtp.gateway_domains` that stands for every domain below.
KNOWN = "known"

# Gateway domains as the ILSs ship them (Evergreen's seed data for `config.sms_carrier`, the
# examples in Koha's and Polaris's carrier tables) and as US and Canadian carriers published
# them, SMS and MMS alike: a patron record may name either.
KNOWN_GATEWAY_DOMAINS: tuple[str, ...] = (
    # United States
    "txt.att.net",
    "mms.att.net",
    "page.att.net",
    "cingular.com",
    "cingulartext.com",
    "vtext.com",
    "vzwpix.com",
    "mypixmessages.com",
    "tmomail.net",
    "messaging.sprintpcs.com",
    "pm.sprint.com",
    "mymetropcs.com",
    "myboostmobile.com",
    "sms.myboostmobile.com",
    "sms.mycricket.com",
    "sms.cricketwireless.net",
    "mms.cricketwireless.net",
    "email.uscc.net",
    "mms.uscc.net",
    "msg.fi.google.com",
    "vmobl.com",
    "mailmymobile.net",
    "text.republicwireless.com",
    "message.ting.com",
    "sms.alltelwireless.com",
    "mobile.gci.net",
    "msg.acsalaska.com",
    "sms.bluecell.com",
    "cellcom.quiktxt.com",
    "iwspcs.net",
    "iwirelesshometext.com",
    # Canada
    "pcs.rogers.com",
    "mms.rogers.com",
    "txt.bell.ca",
    "txt.bellmobility.ca",
    "msg.telus.com",
    "msg.koodomobile.com",
    "fido.ca",
    "vmobile.ca",
    "mobiletxt.ca",
    "sms.sasktel.com",
    "text.mtsmobility.com",
)

# Gateways whose local part is not the bare number. Evergreen's seed template for i wireless is
# `$number.iws@iwspcs.net`; the suffix is the carrier's, not part of the patron's number.
_LOCAL_PART_SUFFIXES: dict[str, str] = {"iwspcs.net": ".iws"}


def expand(domains: Iterable[str]) -> tuple[str, ...]:
    """The configured list with `known` replaced by every known gateway, lower-cased, no
    duplicates, order kept (so an operator's own entries come out as written)."""
    out: list[str] = []
    for domain in domains:
        names = KNOWN_GATEWAY_DOMAINS if domain.strip().lower() == KNOWN else (domain,)
        for name in names:
            name = name.strip().lower().rstrip(".")
            if name not in out:
                out.append(name)
    return tuple(out)


def number_part(local_part: str, domain: str) -> str:
    """The phone number in a gateway address's local part (`2025550143.iws` → `2025550143`)."""
    suffix = _LOCAL_PART_SUFFIXES.get(domain.lower())
    if suffix is not None and local_part.lower().endswith(suffix):
        return local_part[: -len(suffix)]
    return local_part
