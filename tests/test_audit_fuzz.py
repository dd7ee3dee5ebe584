"""Every report writer over arbitrary names (hypothesis): no exception, and each output parses back.

Arbitrary text goes into the fields that come from packets or hosts (host, DNS names, details);
JSON must keep it exactly, JUnit must be well-formed XML 1.0 (ElementTree), HTML must parse with
no tag or control character from the data, the Prometheus textfile must be valid text format
whose label unescapes to the visible name, and the terminal renders with no escape sequence.
The base report comes from a real offline run (test_audit_fleet.real_reports).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest
from rich.console import Console
from test_audit_fleet import real_reports

# CI installs the dev extras and must run this; a local venv without them skips it.
hypothesis = __import__("hypothesis") if os.environ.get("CI") else pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from toolkit.audit.escape import visible  # noqa: E402
from toolkit.audit.report_html import render_html  # noqa: E402
from toolkit.audit.report_json import render_json  # noqa: E402
from toolkit.audit.report_junit import render_junit  # noqa: E402
from toolkit.audit.report_prom import render_prom  # noqa: E402
from toolkit.commands.audit import _fleet_summary, _summary  # noqa: E402


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict:
    return real_reports(tmp_path_factory.mktemp("fuzzrep"))


class _Strict(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


_LABEL = r'[a-z_]+="(?:[^"\\\n]|\\\\|\\"|\\n)*"'
_SAMPLE = re.compile(rf"[a-z_]+\{{{_LABEL}(?:,{_LABEL})*\}} -?[0-9.e+]+")
_XML10 = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_text = st.text(st.characters(exclude_categories=()), max_size=40)  # surrogates too


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(host=_text, names=st.lists(_text, min_size=1, max_size=3), detail=_text)
def test_every_writer_survives_arbitrary_names_and_its_output_parses_back(reports, host, names, detail):
    doc = copy.deepcopy(reports["fail"])
    doc["host"] = host
    doc["findings"][0]["names"] = names
    doc["dns_queries"] = names
    for c in doc["controls"]:
        c["detail"] = detail
        for i in c["items"]:
            if "names" in i:
                i["names"] = names
    # JSON keeps every name exactly.
    back = json.loads(render_json(doc))
    assert back["host"] == host and back["findings"][0]["names"] == names
    # JUnit: well-formed XML 1.0 that ElementTree parses.
    junit = render_junit(doc)
    assert not _XML10.search(junit)
    suite = ET.fromstring(junit.encode()).find("testsuite")
    assert suite.get("tests") == str(len(doc["controls"])) and suite.get("hostname") == visible(host)
    # HTML: parses, no control character reaches the page, no tag comes from the data.
    html = render_html(doc)
    p = _Strict()
    p.feed(html)
    p.close()
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]", html)
    assert visible(host) in "".join(p.text) and visible(names[0]) in "".join(p.text)
    assert "script" not in p.tags and set(p.tags) <= {
        "html", "head", "meta", "title", "style", "body", "header", "h1", "p", "main", "section", "h2",
        "table", "tr", "th", "td", "b", "br", "span", "code",
    }  # fmt: skip
    # Prometheus: every line a comment or a well-formed sample.
    prom = render_prom(doc)
    for line in prom.splitlines():
        assert line.startswith("# ") or _SAMPLE.fullmatch(line), line
    label = re.search(r'^toolkit_audit_exit_code\{host="((?:[^"\\]|\\.)*)"\} 1$', prom, re.M).group(1)
    assert re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), label) == visible(host)
    # Terminal: renders, and nothing from the data becomes an escape sequence or markup.
    buf = io.StringIO()
    console = Console(file=buf, width=200, force_terminal=False, color_system=None)
    _summary(doc, console)
    out = buf.getvalue()
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f]", out)
    fleet = {
        "verdict": "FAIL",
        "counts": {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 0},
        "hosts": [
            {
                "host": host,
                "verdict": "FAIL",
                "egress_flows": 1,
                "failing_controls": [],
                "finished": detail,
                "problems": [detail],
                "report": "x",
            }
        ],
        "egress_names": {n: [host] for n in names},
    }
    buf = io.StringIO()
    _fleet_summary(fleet, Console(file=buf, width=200, force_terminal=False, color_system=None))
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f]", buf.getvalue())


_unit_text = st.lists(
    st.sampled_from(list("=\"'\\ \t\n#;[]%xAE01-_\udcff") + ["Environment", "\\x", "[Service]\n"]), max_size=60
).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=_unit_text, env_file=_unit_text, url=st.text(max_size=60))
def test_unit_env_file_and_url_parsers_never_raise_on_arbitrary_text(tmp_path_factory, text, env_file, url):
    """Whatever a unit, drop-in, environment file or apiBase holds: a result, never an exception."""
    from toolkit.audit.static_checks import check_units, load_rules
    from toolkit.audit.systemd_unit import parse_env_file, parse_unit_file, split_words
    from toolkit.audit.urls import URLError, is_loopback_url, parse_url

    parse_unit_file(text)
    parse_env_file(env_file)
    split_words(text)
    with contextlib.suppress(URLError):
        parse_url(url)
    assert isinstance(is_loopback_url(url)[0], bool)
    root = tmp_path_factory.mktemp("u")
    d = root / "etc/systemd/system"
    d.mkdir(parents=True)
    unit = "[Service]\nExecStart=/usr/bin/vllm\nEnvironmentFile=/e.env\n" + text
    (d / "vllm.service").write_bytes(unit.encode("utf-8", "surrogateescape"))  # \udcff: a raw 0xff byte
    (root / "e.env").write_bytes(env_file.encode("utf-8", "surrogateescape"))
    (result,) = check_units([d], {"vllm": load_rules()["units"]["vllm"]}, root)
    assert result.status in ("pass", "fail", "inconclusive")
