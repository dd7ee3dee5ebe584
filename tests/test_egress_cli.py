"""`toolkit guard` end to end against a guard loaded in a namespace the test creates."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from conftest import require_binary, require_root
from egress_support import (
    PEER_ADDR,
    SERVICE_USERS,
    attempt,
    delete_pair,
    load,
    make_pair,
    render_ruleset,
    throwaway_users,
)
from typer.testing import CliRunner

from toolkit.commands import guard as guard_command

pytestmark = [pytest.mark.root]


def _app() -> typer.Typer:
    # A group with a no-op callback, so "guard" stays a subcommand as it is in the full CLI.
    app = typer.Typer()
    app.callback()(lambda: None)
    guard_command.register(app)
    return app


@pytest.fixture(scope="module")
def guarded_ns() -> Iterator[tuple[str, dict[str, int]]]:
    require_root()
    require_binary("nft")
    with throwaway_users(SERVICE_USERS) as uids:
        pair = make_pair()
        try:
            yield pair.ws, uids
        finally:
            delete_pair(pair)


def test_guard_command_reports_loaded_guard_and_blocked_send_as_json(
    guarded_ns: tuple[str, dict[str, int]], tmp_path: Path
) -> None:
    ns, uids = guarded_ns
    load(ns, render_ruleset([(n, uids[n]) for n in SERVICE_USERS]), tmp_path)
    assert attempt(ns, "egress-t-ollama", "udp", PEER_ADDR, 9) == "EPERM"
    hosts = tmp_path / "hosts"
    hosts.write_text("0.0.0.0 stats.vllm.ai\n")
    args = ["guard", "--json", "--netns", ns, "--hosts-file", str(hosts)]
    for u in SERVICE_USERS:
        args += ["--user", u]
    result = CliRunner().invoke(_app(), args)
    findings = json.loads(result.stdout)
    assert result.exit_code == 1  # GUARD-003 fails: only one phone-home name is sinkholed
    assert [(f["control"], f["status"]) for f in findings][:2] == [
        ("GUARD-001", "pass"),
        ("GUARD-002", "blocked"),
    ]
    assert findings[1]["evidence"]["uid"] == uids["egress-t-ollama"]
    assert findings[1]["evidence"]["packets"] == 1
    assert findings[-1]["control"] == "GUARD-003" and findings[-1]["status"] == "fail"


def test_guard_command_fails_with_one_line_when_the_guard_is_missing(
    guarded_ns: tuple[str, dict[str, int]],
) -> None:
    ns, _ = guarded_ns
    from egress_support import nsx

    nsx(ns, "nft", "delete", "table", "inet", "toolkit_egress_guard", check=False)
    result = CliRunner().invoke(_app(), ["guard", "--netns", ns, "--user", SERVICE_USERS[0]])
    assert result.exit_code == 1
    assert "table inet toolkit_egress_guard is not loaded" in result.stdout
    assert str(result.exception) == "egress guard check failed: GUARD-001, GUARD-003"
