"""The real Continue CLI (`cn` 1.5.47) against a stand-in api.continue.dev that announces 99.0.0.

What cn's own code does (its bundled sources, dist/index.js.map of @continuedev/cli 1.5.47):
- src/version.ts getLatestVersion() fetches https://api.continue.dev/cn/info?id=<sha256 of the
  machine id>; the module calls it at load time (line 65), so every start asks, and no setting or
  environment variable turns the request off.
- src/services/UpdateService.ts checkAndAutoUpdate() runs at every start, under `-p` too
  (services/index.ts registers `updateService.initialize()` with no `headless` argument): when the
  answer is newer and globalContext.autoUpdateCli is not false (`?? true`), it runs
  `npm i -g @continuedev/cli` (execAsync, so the `npm` first on PATH) and restartCLI() spawns
  itself again with CONTINUE_CLI_AUTO_UPDATED=true.

The test runs cn in a network namespace it creates ("host"), with the role's own files rendered by
the role's tasks into a fake home. api.continue.dev resolves only inside that namespace
(/etc/netns/<ns>/hosts, which `ip netns exec` mounts over /etc/hosts) to 198.51.100.2 in a second
namespace ("peer"), where an HTTPS stand-in with a certificate made here (trusted by cn through
NODE_EXTRA_CA_CERTS) answers {"version": "99.0.0"}. A recording `npm` first on PATH stands for npm
(it installs nothing), a `--require` preload records every node start (the restart is one), and a
stand-in chat server on 127.0.0.1:8000 answers the `-p` prompt after 2 s so the update path has run
to its end before cn exits; the chat answer itself is not what is tested (tests/test_sandbox.py
talks to a real vLLM). Three runs:
1. the role's files: cn still asks (the request cannot be switched off) but runs no npm and does
   not restart; the audit's CONTINUE-007 names api.continue.dev, which is not sinkholed here;
2. the control, the files of a developer before the role (no autoUpdateCli): npm i -g and a restart;
3. the same control behind the egress_guard sinkhole (0.0.0.0 / ::): nothing reaches the stand-in,
   no npm, no restart, and CONTINUE-007 passes.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from audit_support import PEER_V4, drop_pair, make_pair
from conftest import CACHE, REPO, require, require_root
from test_continue_config import CONFIG_YAML_PKG, TIERS, _run_role_tasks, plan_for

pytestmark = [pytest.mark.root, pytest.mark.slow]

CN = CACHE / "continue-cli/node_modules/.bin/cn"
ANNOUNCED = "99.0.0"
STAND_IN = r"""
import json, ssl, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
host, port, log, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
class H(BaseHTTPRequestHandler):
    def _answer(self, doc):
        with open(log, "a") as f:
            f.write(json.dumps({"method": self.command, "path": self.path, "host": self.headers.get("Host")}) + "\n")
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):  # api.continue.dev /cn/info
        self._answer({"version": sys.argv[6]})
    def do_POST(self):  # /v1/chat/completions of the chat stand-in
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(2)
        self._answer({"id": "c", "object": "chat.completion", "created": 0, "model": "chat", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
    def log_message(self, *a):
        pass
srv = ThreadingHTTPServer((host, port), H)
if cert != "-":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("ready", flush=True)
srv.serve_forever()
"""


def _certificates(d: Path) -> tuple[Path, Path, Path]:
    """A CA and a leaf for api.continue.dev signed by it (ca.pem, leaf.pem, leaf.key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    span = {"not_valid_before": now - datetime.timedelta(hours=1), "not_valid_after": now + datetime.timedelta(days=1)}
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "toolkit test CA")])
    ca = (
        x509.CertificateBuilder(subject_name=ca_name, issuer_name=ca_name, public_key=ca_key.public_key(),
                                serial_number=x509.random_serial_number(), **span)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    leaf = (
        x509.CertificateBuilder(subject_name=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "api.continue.dev")]),
                                issuer_name=ca_name, public_key=key.public_key(),
                                serial_number=x509.random_serial_number(), **span)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("api.continue.dev")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = d / "ca.pem", d / "leaf.pem", d / "leaf.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def _sinkhole_block() -> str:
    """The hosts lines roles/egress_guard/tasks/sinkhole.yml writes for phone_home.yaml's sinkhole names."""
    doc = yaml.safe_load((REPO / "toolkit/data/phone_home.yaml").read_text())
    names = sorted({e["host"] for e in doc["endpoints"] if e["sinkhole"]})
    return "".join(f"0.0.0.0 {n}\n:: {n}\n" for n in names)


@pytest.fixture(scope="module")
def role_home(tmp_path_factory) -> Path:
    """~/.continue as the continue role's own tasks write it (config.yaml, index/globalContext.json),
    for a plan that serves a reranker (4x H100, overrides.rerank), so the same run shows the rerank path."""
    require((CONFIG_YAML_PKG / "dist/cli.js").exists(), f"needs @continuedev/config-yaml at {CONFIG_YAML_PKG}")
    tmp = tmp_path_factory.mktemp("role")
    home = tmp / "home"
    (home / ".continue/index").mkdir(parents=True)
    r = _run_role_tasks(
        tmp, home, {"toolkit_plan": plan_for("4x-h100-80gb", {"rerank": {"model": "bge-reranker-base"}})}
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "@Codebase without reranking" not in r.stdout
    return home


def test_role_writes_the_planned_reranker_and_reranks_with_it(role_home):
    cfg = yaml.safe_load((role_home / ".continue/config.yaml").read_text())
    rerank = [m for m in cfg["models"] if "rerank" in m["roles"]]
    assert rerank == [{"name": "Local rerank (rerank)", "provider": "vllm", "model": "rerank",
                       "apiBase": "http://127.0.0.1:8002/v1", "roles": ["rerank"]}], rerank  # fmt: skip
    assert cfg["context"][0] == {"provider": "codebase", "params": {"nFinal": 5, "useReranking": True, "nRetrieve": 25}}
    glob = json.loads((role_home / ".continue/index/globalContext.json").read_text())
    assert glob["selectedModelsByProfileId"]["local"]["rerank"] == "Local rerank (rerank)"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    require_root()
    require(CN.exists(), f"needs the Continue CLI at {CN} (.ci/install.d/50-continue-cli.sh)")
    require(shutil.which("ip") is not None, "needs iproute2")
    d = tmp_path_factory.mktemp("world")
    ca, cert, key = _certificates(d)
    pair = make_pair("cnv")
    procs: list[subprocess.Popen] = []
    try:
        for ns, addr, port, log, tls in ((pair.peer, PEER_V4, 443, d / "api.log", (str(cert), str(key))),
                                         (pair.host, "127.0.0.1", 8000, d / "chat.log", ("-", "-"))):  # fmt: skip
            p = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-c", STAND_IN, addr, str(port), str(log), *tls, ANNOUNCED],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            procs.append(p)
            assert p.stdout.readline().strip() == "ready", p.stdout.read()
        yield {"pair": pair, "dir": d, "ca": ca}
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
        drop_pair(pair)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def run_cn(world, role_home: Path, tag: str, global_context: dict | None, hosts: str) -> dict:
    """cn -p with the role's config.yaml in a copy of role_home; what the stand-ins and shims saw."""
    d: Path = world["dir"] / tag
    home = d / "home"
    shutil.copytree(role_home, home)
    if global_context is not None:
        (home / ".continue/index/globalContext.json").write_text(json.dumps(global_context))
    (d / "bin").mkdir()
    npm_log, node_log = d / "npm.log", d / "node.log"
    (d / "bin/npm").write_text(f'#!/bin/sh\necho "$*" >> {npm_log}\nexit 0\n')
    (d / "bin/npm").chmod(0o755)
    (d / "preload.cjs").write_text(
        f'require("fs").appendFileSync({json.dumps(str(node_log))}, JSON.stringify({{pid: process.pid, '
        "ppid: process.ppid, restarted: process.env.CONTINUE_CLI_AUTO_UPDATED || null}) + '\\n');\n"
    )
    etc = Path("/etc/netns") / world["pair"].host
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "hosts").write_text("127.0.0.1 localhost\n" + hosts)
    api_log = world["dir"] / "api.log"
    api_log.write_text("")
    env = {
        "PATH": f"{d / 'bin'}:/usr/bin:/bin", "HOME": str(home), "NODE_EXTRA_CA_CERTS": str(world["ca"]),
        "NODE_OPTIONS": f"--require {d / 'preload.cjs'}",
    }  # fmt: skip
    r = subprocess.run(
        ["ip", "netns", "exec", world["pair"].host, "env", "-i", *(f"{k}={v}" for k, v in env.items()),
         str(CN), "-p", "say ok", "--config", str(home / ".continue/config.yaml")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    # A restarted cn is detached and outlives its parent: wait for every node cn started.
    starts = [json.loads(line) for line in node_log.read_text().splitlines()] if node_log.exists() else []
    deadline = time.monotonic() + 30
    while any(_alive(s["pid"]) for s in starts) and time.monotonic() < deadline:
        time.sleep(0.2)
        starts = [json.loads(line) for line in node_log.read_text().splitlines()]
    for s in starts:  # only the processes this test started, by pid
        if _alive(s["pid"]):
            os.kill(s["pid"], 9)
    return {
        "rc": r.returncode, "stderr": r.stderr, "starts": starts,
        "api": [json.loads(line) for line in api_log.read_text().splitlines()],
        "npm": npm_log.read_text().splitlines() if npm_log.exists() else [],
        "cn_log": (home / ".continue/logs/cn.log").read_text() if (home / ".continue/logs/cn.log").exists() else "",
        "home": home, "hosts": etc / "hosts",
    }  # fmt: skip


def _audit(out: dict) -> dict:
    from toolkit.audit.continue_checks import continue_results

    return {r.control: r for r in continue_results([out["home"]], [], TIERS, out["hosts"])}


def test_cn_with_the_roles_files_asks_for_its_version_but_neither_runs_npm_nor_restarts(world, role_home):
    glob = json.loads((role_home / ".continue/index/globalContext.json").read_text())
    assert glob["autoUpdateCli"] is False
    out = run_cn(world, role_home, "role", None, f"{PEER_V4} api.continue.dev\n")
    assert out["rc"] == 0, out["stderr"][-2000:]
    # The request cannot be switched off: version.ts asks at load time whatever the settings.
    assert len(out["api"]) == 1, out["api"]
    assert out["api"][0]["host"] == "api.continue.dev"
    assert re.fullmatch(r"/cn/info\?id=[0-9a-f]{64}", out["api"][0]["path"]), out["api"]
    assert f"Latest version: {ANNOUNCED}" in out["cn_log"], out["cn_log"][-2000:]
    assert out["npm"] == [], out["npm"]
    assert [s["restarted"] for s in out["starts"]] == [None], out["starts"]
    assert json.loads((out["home"] / ".continue/index/globalContext.json").read_text())["autoUpdateCli"] is False
    # The audit names the version check by its DNS name: this hosts file does not sinkhole it.
    results = _audit(out)
    assert results["CONTINUE-005"].status == "pass", results["CONTINUE-005"]
    assert results["CONTINUE-007"].status == "fail", results["CONTINUE-007"]
    assert results["CONTINUE-007"].items[0]["host"] == "api.continue.dev"
    assert results["CONTINUE-007"].detail.startswith("api.continue.dev is not sinkholed: GET https://api.continue.dev")


def test_control_without_the_roles_setting_cn_runs_npm_install_and_restarts(world, role_home):
    out = run_cn(world, role_home, "control", {}, f"{PEER_V4} api.continue.dev\n")
    assert out["rc"] == 0, out["stderr"][-2000:]
    assert [a["path"].split("?")[0] for a in out["api"]] == ["/cn/info", "/cn/info"], out["api"]  # parent, restart
    assert out["npm"] == ["i -g @continuedev/cli"], out["npm"]
    first, second = out["starts"]
    assert (first["restarted"], second["restarted"], second["ppid"]) == (None, "true", first["pid"]), out["starts"]
    assert _audit(out)["CONTINUE-005"].status == "fail"


def test_behind_the_sinkhole_cn_reaches_nothing_even_with_auto_update_on(world, role_home):
    out = run_cn(world, role_home, "sinkhole", {}, _sinkhole_block())
    assert "0.0.0.0 api.continue.dev\n:: api.continue.dev\n" in out["hosts"].read_text()
    assert out["rc"] == 0, out["stderr"][-2000:]
    assert out["api"] == [], out["api"]
    assert "Latest version" not in out["cn_log"]
    assert out["npm"] == [], out["npm"]
    assert [s["restarted"] for s in out["starts"]] == [None], out["starts"]
    results = _audit(out)
    assert results["CONTINUE-007"].status == "pass", results["CONTINUE-007"]
    assert results["CONTINUE-005"].status == "fail"  # the sinkhole makes it harmless, the audit still says so
