"""Static checks run with every audit: listeners, Continue config, telemetry flags, unit environment.

Inputs are injectable (``StaticInputs``) so tests point them at real files they wrote; the defaults
are the real places: /proc, every home under /home plus /root, /etc/systemd/system. What to look
for is data (toolkit/data/audit_checks.yaml), not code.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from toolkit.audit.attribution import (
    TCP_LISTEN,
    UDP_CLOSE,
    inode_owners,
    process_info,
    read_sockets,
    user_name,
)
from toolkit.audit.controls import Result
from toolkit.audit.systemd_unit import SYSTEM_UNIT_PATH, read_in_root, service_environment, split_words
from toolkit.audit.urls import is_loopback_url


@dataclass
class StaticInputs:
    proc_root: Path = Path("/proc")
    homes: list[Path] | None = None  # None: /root and every directory in /home, under root
    unit_dirs: list[Path] | None = None  # None: systemd's system unit search path, under root
    # The file system judged: "/" here, or another machine's seen from outside (a container's
    # /proc/PID/root, a mounted image); absolute paths inside it (EnvironmentFile=) resolve there.
    root: Path = Path("/")

    def home_dirs(self) -> list[Path]:
        if self.homes is not None:
            return list(self.homes)
        homes = [self.root / "root"]
        with contextlib.suppress(OSError):
            homes += sorted(p for p in (self.root / "home").iterdir() if p.is_dir())
        return homes

    def unit_directories(self) -> list[Path]:
        """Given directories, or those of systemd's search path that exist under root (highest
        priority first; /lib and /usr/lib counted once when one links to the other)."""
        if self.unit_dirs is not None:
            return list(self.unit_dirs)
        out: list[Path] = []
        for rel in SYSTEM_UNIT_PATH:
            d = self.root / rel
            with contextlib.suppress(OSError):
                if d.is_dir() and not any(d.samefile(o) for o in out):
                    out.append(d)
        return out


def load_rules() -> dict[str, Any]:
    return yaml.safe_load(resources.files("toolkit").joinpath("data/audit_checks.yaml").read_text())


def run_static_checks(inputs: StaticInputs, rules: dict[str, Any] | None = None) -> list[Result]:
    rules = rules or load_rules()
    homes = inputs.home_dirs()
    out: list[Result] = []
    for control, check in (
        ("LISTEN-001", lambda: [check_listeners(inputs.proc_root)]),
        ("CONFIG-001", lambda: [check_continue_config(homes, rules["continue"])]),
        ("TELEMETRY-001", lambda: [check_continue_telemetry(homes, rules["continue"])]),
        ("TELEMETRY-002", lambda: [check_vscode_telemetry(homes, rules["vscode"])]),
        ("TELEMETRY-003", lambda: check_units(inputs.unit_directories(), rules["units"], inputs.root)),
    ):
        try:
            out += check()
        except OSError as err:  # unreadable input: cannot be decided, so not a pass
            out.append(Result(control, "inconclusive", f"cannot read {err.filename or ''}: {err.strerror or err}"))
        except (ValueError, TypeError, AttributeError, RecursionError, yaml.YAMLError) as err:
            # A file shaped so that a check cannot read it (nested too deep, wrong types): that
            # control cannot be decided; the rest of the audit still runs.
            out.append(Result(control, "inconclusive", f"cannot judge: {type(err).__name__}: {err}"))
    return out


# ---------------------------------------------------------------------------------------------
# LISTEN-001


def _loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


def check_listeners(proc_root: Path) -> Result:
    sockets = read_sockets(proc_root)
    listening = [
        s
        for s in sockets
        if (s.proto == "tcp" and s.state == TCP_LISTEN)
        or (s.proto == "udp" and s.state == UDP_CLOSE and s.remote[1] == 0)
    ]
    if not (proc_root / "net" / "tcp").exists():
        return Result("LISTEN-001", "inconclusive", f"cannot read {proc_root}/net/tcp")
    wide = [s for s in listening if not _loopback(s.local[0])]
    owners = inode_owners(proc_root) if wide else {}
    items = []
    for s in sorted(wide, key=lambda s: (s.proto, s.local[1], s.local[0])):
        item: dict[str, Any] = {
            "protocol": s.proto,
            "address": s.local[0],
            "port": s.local[1],
            "user": user_name(s.uid),
        }
        pid = owners.get(s.inode)
        item["process"] = process_info(pid, proc_root) if pid else None
        items.append(item)
    if not items:
        return Result("LISTEN-001", "pass", f"{len(listening)} listener(s), all on loopback")
    shown = ", ".join(
        f"{i['protocol']} {i['address']}:{i['port']}" + (f" ({i['process'].get('comm')})" if i["process"] else "")
        for i in items[:6]
    )
    return Result("LISTEN-001", "fail", f"{len(items)} listener(s) beyond loopback: {shown}", items)


# ---------------------------------------------------------------------------------------------
# CONFIG-001 and TELEMETRY-001: Continue


def _load_doc(path: Path) -> Any:
    text = path.read_text()
    if path.suffix == ".json":
        return json.loads(_strip_jsonc(text))
    return yaml.safe_load(text)


def _strip_jsonc(text: str) -> str:
    """JSON with comments and trailing commas (VS Code and Continue accept both) to plain JSON."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            i = j + 1
        elif text.startswith("//", i):
            i = text.find("\n", i) if text.find("\n", i) != -1 else n
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end == -1 else end + 2
        else:
            out.append(c)
            i += 1
    return re.sub(r",(\s*[}\]])", r"\1", "".join(out))


def _models(doc: Any) -> list[dict[str, Any]]:
    if not isinstance(doc, dict):
        return []
    models = [m for m in doc.get("models") or [] if isinstance(m, dict)]
    for key in ("tabAutocompleteModel", "embeddingsProvider", "reranker"):  # config.json (legacy)
        value = doc.get(key)
        for m in value if isinstance(value, list) else [value]:
            if isinstance(m, dict):
                models.append({**m, "_role": key})
    return models


def check_continue_config(homes: list[Path], rules: dict[str, Any]) -> Result:
    items, files, errors = [], [], []
    for home in homes:
        for rel in rules["config_files"]:
            path = home / rel
            if not path.is_file():
                continue
            files.append(str(path))
            try:
                doc = _load_doc(path)
            except (OSError, ValueError, yaml.YAMLError) as err:
                errors.append(f"{path}: cannot parse ({str(err).splitlines()[0]})")
                continue
            for m in _models(doc):
                issue = _model_issue(m, rules)
                if issue:
                    items.append(
                        {
                            "file": str(path),
                            "model": m.get("name") or m.get("model") or m.get("uses"),
                            "provider": m.get("provider"),
                            "apiBase": m.get("apiBase"),
                            "issue": issue,
                        }
                    )
    if errors:
        return Result("CONFIG-001", "inconclusive", "; ".join(errors), items)
    if not files:
        return Result("CONFIG-001", "skip", "no Continue config found")
    if items:
        shown = "; ".join(f"{i['model']}: {i['issue']}" for i in items[:4])
        return Result("CONFIG-001", "fail", f"{len(items)} Continue model(s) not local: {shown}", items)
    return Result("CONFIG-001", "pass", f"every model local in {len(files)} config file(s)")


def _model_issue(m: dict[str, Any], rules: dict[str, Any]) -> str | None:
    if "uses" in m and "provider" not in m:
        return f"hub block {m['uses']!r} is fetched from the Continue hub"
    provider = str(m.get("provider") or "").lower()
    api_base = m.get("apiBase")
    if api_base:
        local, why = is_loopback_url(str(api_base), rules["local_hosts"])
        # Continue (Node) builds requests with new URL(): judge the host that parser finds.
        return None if local else f"apiBase {api_base} is not local: {why}"
    if provider in rules["local_providers"]:
        return None
    if provider in rules["cloud_providers"]:
        return f"cloud provider {provider!r} without a local apiBase"
    return f"provider {provider or '(none)'!r} without a local apiBase"


def check_continue_telemetry(homes: list[Path], rules: dict[str, Any]) -> Result:
    items, seen = [], 0
    for home in homes:
        if not (home / ".continue").is_dir():
            continue
        seen += 1
        values: dict[str, Any] = {}
        gc = home / rules["global_context"]
        cj = home / ".continue/config.json"
        for path, getter in (
            (gc, lambda d: (d.get("sharedConfig") or {}).get("allowAnonymousTelemetry")),
            (cj, lambda d: d.get("allowAnonymousTelemetry")),
        ):
            if path.is_file():
                try:
                    doc = _load_doc(path)
                    values[str(path)] = getter(doc) if isinstance(doc, dict) else None
                except (OSError, ValueError) as err:
                    items.append({"home": str(home), "file": str(path), "issue": f"cannot parse: {err}"})
        explicit = {k: v for k, v in values.items() if v is not None}
        if any(v is not False for v in explicit.values()):
            on = [k for k, v in explicit.items() if v is not False]
            items.append({"home": str(home), "file": ", ".join(on), "issue": "allowAnonymousTelemetry is not false"})
        elif not explicit:
            items.append(
                {
                    "home": str(home),
                    "file": str(gc),
                    "issue": "allowAnonymousTelemetry not set: Continue defaults to sending telemetry",
                }
            )
    if not seen:
        return Result("TELEMETRY-001", "skip", "no Continue installation found")
    if items:
        return Result("TELEMETRY-001", "fail", "; ".join(f"{i['home']}: {i['issue']}" for i in items), items)
    return Result("TELEMETRY-001", "pass", f"off for {seen} user(s)")


def check_vscode_telemetry(homes: list[Path], rules: dict[str, Any]) -> Result:
    items, seen = [], 0
    for home in homes:
        settings = [home / rel for rel in rules["settings_files"] if (home / rel).is_file()]
        if not settings and not any((home / m).exists() for m in rules["markers"]):
            continue
        seen += 1
        if not settings:
            items.append({"home": str(home), "file": None, "issue": "no settings.json: telemetry defaults to all"})
        for path in settings:
            try:
                doc = _load_doc(path)
            except (OSError, ValueError) as err:
                items.append({"home": str(home), "file": str(path), "issue": f"cannot parse: {err}"})
                continue
            value = doc.get(rules["key"]) if isinstance(doc, dict) else None
            if value != rules["required"]:
                items.append(
                    {
                        "home": str(home),
                        "file": str(path),
                        "issue": f"{rules['key']} is {value!r}, not {rules['required']!r}",
                    }
                )
    if not seen:
        return Result("TELEMETRY-002", "skip", "no VS Code user settings found")
    if items:
        return Result(
            "TELEMETRY-002",
            "fail",
            "; ".join(f"{i['file'] or i['home']}: {i['issue']}" for i in items),
            items,
        )
    return Result("TELEMETRY-002", "pass", f"off for {seen} user(s)")


# ---------------------------------------------------------------------------------------------
# TELEMETRY-003/004: systemd units


def _unit_names(unit_dirs: list[Path]) -> list[str]:
    """Service units found in the directories: unit files, and instances enabled through
    *.wants/*.requires links (a template's instances exist only there)."""
    names: set[str] = set()
    for d in unit_dirs:
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if p.name.endswith(".service") and (p.is_file() or p.is_symlink()):
                names.add(p.name)
            elif p.is_dir() and p.name.endswith((".wants", ".requires")):
                names.update(q.name for q in p.iterdir() if q.name.endswith(".service"))
    # A template is judged through its instances when it has some.
    templates = {n for n in names if n.endswith("@.service")}
    instanced = {n.split("@", 1)[0] + "@.service" for n in names if "@" in n and n not in templates}
    return sorted(names - (templates & instanced))


def _in_root(root: Path):
    def read(path: str) -> str:
        return read_in_root(root, root / path.lstrip("/"))

    def glob(pattern: str) -> list[str]:
        return sorted("/" + str(p.relative_to(root)) for p in root.glob(pattern.lstrip("/")))

    return read, glob


def ollama_listen_host(value: str) -> str:
    """The host Ollama listens on for OLLAMA_HOST=value, as its envconfig.Host() reads it: quotes
    and spaces trimmed, an optional scheme://, a /path cut off, then Go's net.SplitHostPort; a
    bare address (``::1``, ``0.0.0.0``) is the host itself, and an empty host means every address."""
    v = value.strip().strip("\"'")
    hostport = v.partition("://")[2] if "://" in v else v
    hostport = hostport.partition("/")[0]
    if hostport.startswith("[") and "]" in hostport:
        inner, _, rest = hostport[1:].partition("]")
        if rest == "" or (rest.startswith(":") and ":" not in rest[1:]):
            return inner
    elif hostport.count(":") == 1:
        return hostport.partition(":")[0]
    if not hostport:
        return "127.0.0.1"  # unset or empty: Ollama's default, 127.0.0.1:11434
    return hostport.strip("[]")


_SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "busybox"}


def exec_environment(line: str, env: dict[str, str], watched: set[str]) -> tuple[dict[str, str], str | None]:
    """The environment an ExecStart= line hands on: env(1) in front of the command changes it
    (NAME=VALUE, -u NAME, -i); a shell's script cannot be read, so one that names a watched
    variable makes the reading uncertain. (environment, why uncertain or None)"""
    words, error = split_words(line.lstrip("@-:+!"), relax=True)
    prog = (words or line.lstrip("@-:+!").split() or [""])[0].rsplit("/", 1)[-1]
    if error and (prog == "env" or prog in _SHELLS):
        return env, f"ExecStart={line}: {error}"
    if prog in _SHELLS and any(v in line for v in watched):
        return env, f"ExecStart runs a shell that names {', '.join(sorted(v for v in watched if v in line))}"
    if prog != "env":
        return env, None
    env = dict(env)
    args = words[1:]
    while args:
        a = args.pop(0)
        if a in ("-i", "--ignore-environment", "-"):
            env = {}
        elif a in ("-u", "--unset") and args:
            env.pop(args.pop(0), None)
        elif a.startswith("--unset="):
            env.pop(a.partition("=")[2], None)
        elif a.startswith("-u") and len(a) > 2:
            env.pop(a[2:], None)
        elif a.startswith("-") and a not in ("--",):
            return env, f"ExecStart runs env {a}: not read"
        elif "=" in a and _ENV_NAME.fullmatch(a.partition("=")[0]):
            env[a.partition("=")[0]] = a.partition("=")[2]
        else:
            break  # the command itself
    return env, None


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_units(unit_dirs: list[Path], rules: dict[str, Any], root: Path = Path("/")) -> list[Result]:
    """TELEMETRY-003/004: each matching unit's environment as systemd builds it
    (toolkit/audit/systemd_unit.py). A finding in what systemd reads fails the control; a unit
    systemd would read with warnings, or differently by version, makes it INCONCLUSIVE."""
    read, glob = _in_root(root)
    services = []
    for name in _unit_names(unit_dirs):
        try:
            services.append((name, service_environment(name, unit_dirs, read, glob, root), None))
        except FileNotFoundError:
            continue  # a dangling link: systemd has no such unit either
        except OSError as err:
            services.append((name, None, f"cannot read: {err.strerror or err}"))
    results = []
    for product, rule in rules.items():
        items: list[dict[str, Any]] = []
        matched = 0
        for name, se, error in services:
            if se is None:
                items.append({"unit": name, "status": "inconclusive", "issue": error})
                continue
            runs = any(m in x for x in se.exec_start for m in rule["exec_match"])
            unsure = "*" in se.uncertain and any(m in se.text for m in rule["exec_match"])
            if se.masked or not (runs or unsure):
                continue
            matched += 1
            unit = se.files[0] if se.files else name
            if se.refused:  # it cannot start as written, and what was meant cannot be read
                items.append({"unit": unit, "status": "inconclusive", "issue": se.refused})
                continue
            watched = set(rule["env"]) | set(rule.get("loopback_env") or {})
            found: list[tuple[str, str]] = []
            env = se.environment
            for line in se.exec_start:
                if any(m in line for m in rule["exec_match"]):
                    env, why = exec_environment(line, env, watched)
                    if why:
                        found.append(("inconclusive", why))
            for k, v in rule["env"].items():
                if env.get(k) != v:
                    found.append(("fail", f"{k}={env[k]!r}, needs {v!r}" if k in env else f"{k} not set (needs {v!r})"))
            for k in rule.get("loopback_env") or {}:
                if k in env:
                    host = ollama_listen_host(env[k])
                    if not _loopback(host) and host != "localhost":
                        found.append(("fail", f"{k}={env[k]!r} is not a loopback address"))
            found += [("fail", f"EnvironmentFile {p} is missing") for p in se.missing_files]
            found += [("inconclusive", why) for var, why in se.uncertain.items() if var == "*" or var in watched]
            items += [{"unit": unit, "status": st, "issue": issue} for st, issue in found]
        control = rule["control"]
        fails = [i for i in items if i["status"] == "fail"]
        if not matched and not items:
            results.append(Result(control, "skip", f"no {product} unit in {', '.join(map(str, unit_dirs))}"))
        elif items:
            shown = "; ".join(f"{Path(i['unit']).name}: {i['issue']}" for i in (fails or items)[:6])
            results.append(Result(control, "fail" if fails else "inconclusive", shown, items))
        else:
            results.append(Result(control, "pass", f"{matched} {product} unit(s) set every opt-out"))
    return results
