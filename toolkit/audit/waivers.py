"""Waivers: a team accepts a known finding, in writing, for a while.

File (YAML)::

    schema: 1
    waivers:
      - control: LISTEN-001
        hosts: "build-*"              # fnmatch pattern on the host name; "*" for every host
        justification: sshd listens on the build LAN for the CI runners
        owner: secops@example.com
        expires: 2027-03-31

A waiver turns a failing control into "waived" (the report still shows the finding and the
waiver). A malformed waiver, one naming an unknown control, or an expired one stops the run at
once (exit 64): silently ignoring it would turn a waived pass into a surprise failure, or worse,
keep an expired acceptance alive.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from toolkit.audit import AuditUsageError
from toolkit.audit.controls import Result, known

FIELDS = ("control", "hosts", "justification", "owner", "expires")


@dataclass(frozen=True)
class Waiver:
    control: str
    hosts: str
    justification: str
    owner: str
    expires: dt.date

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["expires"] = self.expires.isoformat()
        return d


def load_waivers(path: Path | None, today: dt.date | None = None) -> list[Waiver]:
    if path is None:
        return []
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as err:
        raise AuditUsageError(f"waivers {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise AuditUsageError(f"waivers {path}: not valid YAML ({str(err).splitlines()[0]})") from None
    return parse_waivers(doc, str(path), today or dt.date.today())


def parse_waivers(doc: Any, where: str, today: dt.date) -> list[Waiver]:
    if not isinstance(doc, dict) or not isinstance(doc.get("waivers"), list):
        raise AuditUsageError(f"{where}: expected a mapping with a 'waivers' list")
    if doc.get("schema", 1) != 1:
        raise AuditUsageError(f"{where}: unsupported schema {doc.get('schema')!r} (expected 1)")
    out = []
    for n, w in enumerate(doc["waivers"], 1):
        at = f"{where}: waiver {n}"
        if not isinstance(w, dict):
            raise AuditUsageError(f"{at}: expected a mapping")
        missing = [f for f in ("control", "justification", "owner", "expires") if not w.get(f)]
        if missing:
            raise AuditUsageError(f"{at}: missing {', '.join(missing)}")
        extra = set(w) - set(FIELDS)
        if extra:
            raise AuditUsageError(f"{at}: unknown field(s) {', '.join(sorted(extra))}")
        control = str(w["control"])
        if control not in known():
            raise AuditUsageError(f"{at}: unknown control {control!r}")
        expires = w["expires"]
        if isinstance(expires, str):
            try:
                expires = dt.date.fromisoformat(expires)
            except ValueError:
                raise AuditUsageError(f"{at}: expires {expires!r} is not a date (YYYY-MM-DD)") from None
        if isinstance(expires, dt.datetime):
            expires = expires.date()
        if not isinstance(expires, dt.date):
            raise AuditUsageError(f"{at}: expires must be a date (YYYY-MM-DD)")
        if expires < today:
            raise AuditUsageError(
                f"{at} ({control}, owner {w['owner']}) expired on {expires.isoformat()}: renew or remove it"
            )
        hosts = str(w.get("hosts") or "*")
        out.append(Waiver(control, hosts, str(w["justification"]), str(w["owner"]), expires))
    return out


def apply_waivers(results: list[Result], waivers: list[Waiver], host: str) -> list[Result]:
    """Failing results covered by a waiver for this host become "waived" (in place, returned)."""
    for r in results:
        if r.status != "fail":
            continue
        for w in waivers:
            if w.control == r.control and fnmatch.fnmatchcase(host, w.hosts):
                r.status = "waived"
                r.waiver = w.to_dict()
                break
    return results
