"""The audit's URL host parser against Node's WHATWG URL parser (what Continue builds requests with).

Ground truth is Node itself (node 20 on the machine): every URL in the table is given to
``new URL()`` and to toolkit.audit.urls.parse_url, and scheme, hostname and port must agree, or
both must refuse the URL. The table is what an attacker would write to make a remote apiBase
look local to a Python reader (backslashes, userinfo, IPv4 shorthand, percent-encoding, UTS #46).
"""

from __future__ import annotations

import json
import subprocess

from conftest import require_binary

from toolkit.audit.static_checks import check_continue_config, load_rules
from toolkit.audit.urls import URLError, is_loopback_url, parse_url

HOSTILE = [
    "http://evil.example\\@127.0.0.1:8000/v1",
    "http://127.0.0.1:8000/v1",
    "http://localhost:8000/v1",
    "http://127.0.0.1\\@evil.example/",
    "http://user:pw@127.0.0.1:8000/",
    "http://127.0.0.1:8000@evil.example/",
    "http://a@b@127.0.0.1/",
    "http://evil.example#@127.0.0.1/",
    "http://evil.example?@127.0.0.1/",
    "http://evil.example/@127.0.0.1/",
    "http:\\\\127.0.0.1\\v1",
    "http:/127.0.0.1/",
    "http:127.0.0.1/",
    "HTTP://LOCALHOST/",
    "http://0x7f.1/",
    "http://0x7f000001/",
    "http://2130706433/",
    "http://017700000001/",
    "http://127.1/",
    "http://127.0.1/",
    "http://%31%32%37.0.0.1/",
    "http://127.0.0.1./",
    "http://１２７.０.０.１/",
    "http://127。0。0。1/",
    "http://[::1]:8000/",
    "http://[0:0:0:0:0:0:0:1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::1%25lo]/",
    "http://[::1/",
    "http://::1/",
    "http://127.0.0.1.evil.example/",
    "http://localhost.evil.example/",
    "http://evil.example:80\\@127.0.0.1/",
    " http://127.0.0.1/ ",
    "http://127.0.0\t.1/",
    "http://127.0.0\n.1/",
    "http://127.0.0.1:99999/",
    "http://127.0.0.1:8a/",
    "http://1.2.3.4.5/",
    "http://09.1/",
    "http://foo.0x/",
    "http://256.0.0.1/",
    "http://0x100.0.0.1/",
    "http://127.0.0.0x1/",
    "http://127.16777215/",
    "http://4294967296/",
    "http://@127.0.0.1/",
    "http://@/",
    "http://:8000/",
    "http:///127.0.0.1/",
    "https://127.0.0.1:443/",
    "ftp://127.0.0.1/",
    "ws://127.0.0.1/",
    "foo://127.0.0.1/",
    "foo://evil.example\\@127.0.0.1/",
    "/v1/chat",
    "127.0.0.1:8000",
    "localhost:8000/v1",
    "http://LocalHost./",
    "http://xn--nxasmq6b/",
    "http://evil%2eexample/",
    "http://evil%00.example/",
    "http://ex ample/",
    "http://exa<mple/",
    "http://[::1]]/",
    "http://[1:2:3:4:5:6:7:8:9]/",
    "http://[::127.0.0.1]/",
    "http://0/",
    "http://0.0.0.0/",
    "http://0x/",
    "http://evil.example%5C@127.0.0.1/",
    "http://EVIL.example\\%40127.0.0.1/",
    "http://127.0.0.1%2f@evil.example/",
    "http://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ/",
    "http://127.0.0.1\u00ad/",
    "https://[::ffff:7f00:1]/",
    "http://0177.0.0.1/",
    "http://0x7F.0.0.1:8000/v1",
    "http://evil.example:8000\\@localhost:8000/v1",
]


NODE = """
const urls = JSON.parse(require('fs').readFileSync(0, 'utf8'));
console.log(JSON.stringify(urls.map(u => {
  try { const x = new URL(u); return [x.protocol.slice(0, -1), x.hostname, x.port]; } catch (e) { return null; }
})));
"""


def _mine(url: str) -> list[str] | None:
    try:
        u = parse_url(url)
    except URLError:
        return None
    return [u.scheme, u.hostname, "" if u.port is None else str(u.port)]


def test_host_scheme_and_port_match_node_whatwg_url_for_every_hostile_url():
    node = require_binary("node")
    proc = subprocess.run([node, "-e", NODE], input=json.dumps(HOSTILE), capture_output=True, text=True, check=True)
    truth = json.loads(proc.stdout)
    diffs = [(u, t, _mine(u)) for u, t in zip(HOSTILE, truth, strict=True) if _mine(u) != t]
    assert diffs == []
    # The table holds both outcomes, and the headline case: Node sends it to evil.example.
    assert truth[0] == ["http", "evil.example", ""] and None in truth


def test_loopback_verdicts_follow_the_parsed_host():
    local = ["localhost", "127.0.0.1", "::1", "ip6-localhost"]
    yes = [
        "http://127.0.0.1:8000/v1",
        "http://0x7f.1/",
        "http://[::1]:8000/",
        "http://%31%32%37.0.0.1/",
        "http://[::ffff:127.0.0.1]/",
        "HTTP://LOCALHOST:8000/",
        "http:\\\\127.0.0.1\\v1",
    ]
    no = [
        "http://evil.example\\@127.0.0.1:8000/v1",
        "http://127.0.0.1.evil.example/",
        "http://localhost./",
        "http://0.0.0.0/",
        "ftp://127.0.0.1/",
        "/v1",
        "127.0.0.1:8000",
        "http://[::1/",
        "http://10.0.0.1/",
    ]
    assert [u for u in yes if not is_loopback_url(u, local)[0]] == []
    assert [u for u in no if is_loopback_url(u, local)[0]] == []


def test_continue_config_with_backslash_userinfo_trick_is_not_local(tmp_path):
    home = tmp_path / "dev"
    (home / ".continue").mkdir(parents=True)
    (home / ".continue/config.yaml").write_text(
        "models:\n"
        "  - {name: sneaky, provider: openai, model: x, apiBase: 'http://evil.example\\@127.0.0.1:8000/v1'}\n"
        "  - {name: hex, provider: openai, model: x, apiBase: 'http://0x7f.1:8000/v1'}\n"
    )
    r = check_continue_config([home], load_rules()["continue"])
    assert r.status == "fail"
    assert [(i["model"], i["issue"]) for i in r.items] == [
        ("sneaky", "apiBase http://evil.example\\@127.0.0.1:8000/v1 is not local: host evil.example is not local")
    ]


# Pieces an attacker combines: schemes, slashes of both kinds, userinfo and port separators,
# brackets, IPv4 forms, percent-escapes, full-width and ideographic characters, soft hyphens,
# punycode prefixes, tabs and spaces.
PIECES = [
    "http://", "https://", "http:", "HTTP://", "ws://", "foo://", "//", "/", "\\", "@", ":", "[", "]", "::1",
    "127", "0x7f", "0", "1", "8000", "65536", ".", "%2e", "%31", "%40", "%5c", "?", "#", "evil", "example",
    "localhost", "a", "-", "0177", "\t", " ", "％", "１", "。", "xn--", "\u00ad", "ffff", "4294967295", "256",
    "%", "%zz", "%00", "~", "!", "'",
]  # fmt: skip


def test_generated_urls_parse_as_node_parses_them():
    """A seeded differential test: 5000 URLs built from hostile pieces, one node call."""
    import random

    node = require_binary("node")
    rnd = random.Random(16)
    starts = ["http://", "https://", "http:\\\\", "ws://", ""]
    urls = [rnd.choice(starts) + "".join(rnd.choices(PIECES, k=rnd.randint(1, 9))) for _ in range(5000)]
    proc = subprocess.run([node, "-e", NODE], input=json.dumps(urls), capture_output=True, text=True, check=True)
    truth = json.loads(proc.stdout)
    diffs = [(u, t, _mine(u)) for u, t in zip(urls, truth, strict=True) if _mine(u) != t]
    assert diffs[:10] == []
    assert 1000 < truth.count(None) < 4000  # both outcomes well represented
