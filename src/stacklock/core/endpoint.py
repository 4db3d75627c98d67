"""The client's path to a serving endpoint, judged (docs/verify.md, docs/serving.md).

`stacklock.adapters.tls.client_check` makes a TLS handshake to every node's endpoint from the
controller and POSTs each model's smoke test through it with a client token; what it saw is
judged here, without I/O, into the checks of the `endpoint_client` facts section, which
`findings` hands to the one comparison (`stacklock.core.parity.compare`):

* `endpoint.certificate.chain`: a client trusting the environment's CA (the lab CA,
  `endpoint.tls.ca_file`, or the system's trust store) accepts the served chain;
* `endpoint.certificate.expiry`: valid now, and for at least `endpoint.certificate_min_days`;
* `endpoint.certificate.name`: a SAN names the address clients use for the node;
* `endpoint.certificate.sha256`: the served certificate is the one the controller configured;
* `endpoint.smoke.NAME`: the model's smoke answer through the endpoint.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

CHAIN = "endpoint.certificate.chain"
EXPIRY = "endpoint.certificate.expiry"
NAME = "endpoint.certificate.name"
FINGERPRINT = "endpoint.certificate.sha256"
CERTIFICATE_COMPONENTS = (CHAIN, EXPIRY, NAME, FINGERPRINT)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass(frozen=True)
class Finding:
    component: str
    expected: str | None
    actual: str | None
    status: str  # match | deviation | could-not-look
    detail: str = ""


def check(component: str, expected: str | None, actual: str | None, status: str,
          detail: str = "") -> dict[str, Any]:
    """One check of the `endpoint_client` section (JSON: it travels as a fact)."""
    return {"component": component, "expected": expected, "actual": actual, "status": status,
            "detail": detail}


def _day(t: _dt.datetime) -> str:
    return t.astimezone(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def sans(cert: x509.Certificate) -> list[str]:
    """`IP:10.0.0.2`, `DNS:name`, in the certificate's order."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return ([f"IP:{v}" for v in ext.get_values_for_type(x509.IPAddress)]
            + [f"DNS:{v}" for v in ext.get_values_for_type(x509.DNSName)])


def names_address(cert: x509.Certificate, address: str) -> bool:
    """A SAN names `address` (an IP address: an IP SAN; a name: a DNS SAN, `*.` for one label),
    as a client checking the name would decide (the subject's CN is not looked at)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        ip = None
    for san in sans(cert):
        kind, _, value = san.partition(":")
        if ip is not None:
            if kind == "IP" and ipaddress.ip_address(value) == ip:
                return True
            continue
        if kind != "DNS":
            continue
        want, have = address.lower().rstrip("."), value.lower().rstrip(".")
        if want == have:
            return True
        if have.startswith("*.") and "." in want and want.split(".", 1)[1] == have[2:]:
            return True
    return False


def certificate_checks(cert: x509.Certificate, *, chain_error: str | None, trust: str,
                       address: str, expected_sha256: str | None, why_unknown: str,
                       min_days: int, now: _dt.datetime) -> list[dict[str, Any]]:
    """The four certificate checks of the certificate a node's endpoint served."""
    out = [check(CHAIN, f"trusted by {trust}",
                 "trusted" if chain_error is None else f"refused: {chain_error}",
                 "match" if chain_error is None else "deviation",
                 "" if chain_error is None else
                 f"a client trusting {trust} refuses the TLS handshake; configure the node's "
                 "certificate again (stacklock configure ENV), or correct endpoint.tls")]
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    left = not_after - now
    want = f"valid for at least {min_days} more day(s)"
    if not_after <= now:
        got, ok = f"expired on {_day(not_after)}", False
    elif not_before > now:
        got, ok = f"not valid before {_day(not_before)}", False
    elif left < _dt.timedelta(days=min_days):
        got, ok = f"expires on {_day(not_after)} (in {left.days} day(s))", False
    else:
        got, ok = f"valid until {_day(not_after)} ({left.days} day(s) left)", True
    out.append(check(EXPIRY, want, got, "match" if ok else "deviation",
                     "" if ok else "renew the certificate and configure the environment "
                     "(the lab CA issues a new one when a third of its life is left)"))
    named = names_address(cert, address)
    out.append(check(NAME, address, ", ".join(sans(cert)) or "no subjectAltName",
                     "match" if named else "deviation",
                     "" if named else f"clients call {address}: the certificate must name it "
                     "in a subjectAltName"))
    served = cert.fingerprint(hashes.SHA256()).hex()
    if expected_sha256 is None:
        out.append(check(FINGERPRINT, None, served, "could-not-look",
                         why_unknown or "the configured certificate is not known here"))
    else:
        same = served == expected_sha256
        out.append(check(FINGERPRINT, expected_sha256, served, "match" if same else "deviation",
                         "" if same else "the node serves another certificate than the one "
                         "configured: stacklock configure ENV puts it back"))
    return out


def smoke_answer(status: int, body: bytes, kind: str) -> str:
    """An answer in the form of its expectation (`core.parity.smoke_actual`'s)."""
    text = _CONTROL.sub(" ", body[:200].decode("utf-8", "replace")).strip()[:120]
    if status != 200:
        return f"HTTP {status}: {text}".rstrip(": ")
    if kind == "sha256":
        return f"sha256:{hashlib.sha256(body).hexdigest()}"
    try:
        data = json.loads(body.decode("utf-8"))
    except ValueError:
        return f"not numbers: {text}"
    found: list[float] = []
    if not _numbers(data, found):
        return f"not numbers: {text}"
    return json.dumps(found)


def _numbers(data: Any, out: list[float]) -> bool:
    if isinstance(data, bool):
        return False
    if isinstance(data, int | float):
        out.append(float(data))
        return True
    if isinstance(data, list):
        return all(_numbers(item, out) for item in data)
    return False


_NOT_RUN = ("the controller did not check the client's path (the verify play's "
            "stacklock_endpoint_client task did not run for this node: an older play?)")


def findings(expected: Mapping[str, str | None], facts: Mapping[str, Any]) -> list[Finding]:
    """The client's-path checks of one node of an environment with an endpoint (the
    expectation has `endpoint.health`); none for one without."""
    if "endpoint.health" not in expected:
        return []
    section = facts.get("endpoint_client")
    if not isinstance(section, Mapping):
        return [Finding(c, None, None, "could-not-look", _cannot(_NOT_RUN))
                for c in CERTIFICATE_COMPONENTS]
    components = [str(c) for c in section.get("components") or CERTIFICATE_COMPONENTS]
    if section.get("refused"):  # the node answered: nothing listens there
        return [Finding(c, "answers over TLS", str(section["refused"]), "deviation",
                        f"{section.get('url')}: the endpoint does not answer clients")
                for c in components]
    if section.get("error"):  # could not look: a timeout, no route, a failed handshake
        return [Finding(c, None, None, "could-not-look", _cannot(str(section["error"])))
                for c in components]
    out = []
    for entry in section.get("checks") or []:
        if isinstance(entry, Mapping):
            status = str(entry.get("status"))
            detail = str(entry.get("detail") or "")
            if status not in ("match", "deviation"):
                status, detail = "could-not-look", _cannot(detail)
            out.append(Finding(str(entry.get("component")), _opt(entry.get("expected")),
                               _opt(entry.get("actual")), status, detail))
    return out


#: how every value that could not be read says so (the facts collectors' prefix)
CANNOT_LOOK = "could not look: "


def _cannot(detail: str) -> str:
    return detail if detail.startswith(CANNOT_LOOK) else CANNOT_LOOK + detail


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


__all__ = ["CERTIFICATE_COMPONENTS", "CHAIN", "EXPIRY", "FINGERPRINT", "NAME", "Finding",
           "certificate_checks", "check", "findings", "names_address", "sans", "smoke_answer"]
