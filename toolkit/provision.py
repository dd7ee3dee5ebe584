"""Provisioning through ansible-runner: plan every host first, then converge, with live progress.

A run lives in its own directory (``artifacts/runs/<id>/``): the plans of every host
(``plans/<host>.json``), ansible-runner's artifacts (events, stdout, status, rc) for both phases,
and ``summary.json``. Nothing is written outside it on the controller.

The playbooks and roles are those of the collection pca.toolkit, found where this package is: in a
checkout the repository root is the collection; installed from the wheel, the collection lies beside
the package as ``site-packages/ansible_collections/pca/toolkit`` (setup.py puts it there).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from toolkit import files
from toolkit.errors import CheckFailed, EnvironmentProblem, UsageError

REPO = Path(__file__).resolve().parent.parent
# A checkout: the repository root is the collection (galaxy.yml), with ansible.cfg and collections/.
CHECKOUT = (REPO / "galaxy.yml").is_file() and (REPO / "ansible.cfg").is_file()
# The collection the wheel installed beside the package (REPO is then site-packages).
INSTALLED_COLLECTION = REPO / "ansible_collections" / "pca" / "toolkit"
COLLECTION = REPO if CHECKOUT else INSTALLED_COLLECTION
PLAYBOOKS = COLLECTION / "playbooks"
# Installed, there is no checkout to keep inventories and runs in: both are relative to the
# directory the toolkit runs in.
DEFAULT_INVENTORY = REPO / "inventories" / "local" if CHECKOUT else Path("inventories") / "local"
RUNS_DIR = REPO / "artifacts" / "runs" if CHECKOUT else Path("artifacts") / "runs"


# Tasks outside any role (gpu_facts planning, fact gathering) are counted under this name.
NO_ROLE = "facts"


@dataclass
class RoleState:
    """What one role did on one host."""

    ok: int = 0
    changed: int = 0
    failed: int = 0
    skipped: int = 0


@dataclass
class HostState:
    """What one host is doing now and what it did, in all and per role."""

    role: str = ""
    task: str = ""
    ok: int = 0
    changed: int = 0
    failed: int = 0
    skipped: int = 0
    unreachable: bool = False
    done: bool = False
    errors: list[str] = field(default_factory=list)
    roles: dict[str, RoleState] = field(default_factory=dict)


@dataclass
class RunResult:
    run_dir: Path
    rc: int
    status: str
    hosts: dict[str, HostState]
    plans: dict[str, dict]
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each phase: plan, converge

    @property
    def failed_hosts(self) -> list[str]:
        return sorted(h for h, s in self.hosts.items() if s.failed or s.unreachable)

    def summary(self) -> dict:
        return {
            "run_dir": str(self.run_dir),
            "rc": self.rc,
            "status": self.status,
            "seconds": {k: round(v, 1) for k, v in self.seconds.items()},
            "hosts": {h: asdict(s) for h, s in sorted(self.hosts.items())},
        }


class EventTracker:
    """Folds ansible-runner events into per-host state; calls ``on_change`` after each update."""

    def __init__(self, on_change: Callable[[EventTracker], None] | None = None) -> None:
        self.hosts: dict[str, HostState] = {}
        self.facts: dict[str, dict] = {}
        self.on_change = on_change

    def __call__(self, event: dict) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {}) or {}
        host = data.get("host")
        if kind == "playbook_on_stats":
            for st in self.hosts.values():
                st.done = True
            if self.on_change:
                self.on_change(self)
        elif host and kind.startswith("runner_on_"):
            st = self.hosts.setdefault(host, HostState())
            st.role = data.get("role") or NO_ROLE
            st.task = data.get("task") or st.task
            rs = st.roles.setdefault(st.role, RoleState())
            res = data.get("res", {}) or {}
            if kind == "runner_on_ok":
                changed = bool(res.get("changed"))
                st.ok, rs.ok = st.ok + 1, rs.ok + 1
                st.changed, rs.changed = st.changed + changed, rs.changed + changed
                if "ansible_facts" in res:
                    self.facts.setdefault(host, {}).update(res["ansible_facts"])
            elif kind == "runner_on_failed" and not data.get("ignore_errors"):
                st.failed, rs.failed = st.failed + 1, rs.failed + 1
                st.errors.append(f"{data.get('task')}: {_one_line(res.get('msg') or res.get('stderr') or res)}")
            elif kind == "runner_on_unreachable":
                st.unreachable = True
                rs.failed += 1
                st.errors.append(f"unreachable: {_one_line(res.get('msg') or res)}")
            elif kind == "runner_on_skipped":
                st.skipped, rs.skipped = st.skipped + 1, rs.skipped + 1
            if self.on_change:
                self.on_change(self)
        return True  # keep the event in the artifacts


def playbook_roles(playbook: str, base: Path = PLAYBOOKS) -> list[str]:
    """The roles a playbook runs, in order (following import_playbook): the columns of the live
    view, known before the first event. Tasks outside roles come first, as NO_ROLE."""
    import yaml

    roles = [NO_ROLE]

    def walk(tasks: list) -> None:
        for t in tasks or []:
            if not isinstance(t, dict):
                continue
            for key in ("ansible.builtin.import_role", "ansible.builtin.include_role", "import_role", "include_role"):
                name = (t.get(key) or {}).get("name") if isinstance(t.get(key), dict) else None
                if name and name not in roles:
                    roles.append(name)
            walk(t.get("block", []))

    def read(path: Path) -> None:
        try:
            plays = yaml.safe_load(path.read_text()) or []
        except (OSError, yaml.YAMLError):
            return
        for play in plays if isinstance(plays, list) else []:
            if not isinstance(play, dict):
                continue
            if "ansible.builtin.import_playbook" in play or "import_playbook" in play:
                read(path.parent / (play.get("ansible.builtin.import_playbook") or play.get("import_playbook")))
            for r in play.get("roles") or []:
                name = r.get("role") or r.get("name") if isinstance(r, dict) else r
                if name and name not in roles:
                    roles.append(name)
            for section in ("pre_tasks", "tasks", "post_tasks"):
                walk(play.get(section, []))

    read(base / playbook)
    return roles


def _one_line(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def check_inventory(inventory: Path, limit: str | None) -> list[str]:
    """Parse the inventory with Ansible itself; return the hosts the run will touch, or raise UsageError."""
    from ansible import constants as C
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader

    if not inventory.exists():
        raise UsageError(f"inventory {inventory} does not exist")
    # Ansible only warns about an inventory no plugin can parse and then runs on no hosts; fail instead.
    C.INVENTORY_UNPARSED_IS_FAILED = True
    C.INVENTORY_ANY_UNPARSED_IS_FAILED = True
    try:
        # Ansible prints each plugin's failure with a traceback; the one-line error below says it all.
        with contextlib.redirect_stderr(io.StringIO()):
            inv = InventoryManager(loader=DataLoader(), sources=[str(inventory)])
            hosts = [h.name for h in (inv.get_hosts(pattern=limit) if limit else inv.get_hosts())]
    except AnsibleError as err:
        raise UsageError(f"inventory {inventory}: {_one_line(str(err).splitlines()[0])}") from None
    if not hosts:
        if limit:
            raise UsageError(f"--limit {limit!r} matches no host or group in {inventory}")
        raise UsageError(f"inventory {inventory} has no hosts")
    return sorted(hosts)


def require_collection() -> None:
    if not (PLAYBOOKS / "site.yml").is_file():
        raise EnvironmentProblem(
            f"the pca.toolkit collection is not beside the toolkit ({COLLECTION} has no playbooks/site.yml):"
            " install the toolkit from its wheel, or run it from a checkout"
        )


# The callback that loads plugin option definitions once per run rather than once per task.
WARM_PLUGINS = "pca.toolkit.warm_plugins"


def ansible_env() -> dict[str, str]:
    """What every Ansible run of the toolkit needs: the roles and the pca.toolkit collection (modules,
    module_utils, filters, lookups). In a checkout that is the checkout itself (collections/ links
    back) with the project's ansible.cfg; installed, the copy beside the package, and the user's own
    Ansible configuration if any. The path is set either way, so an ansible-playbook whose
    interpreter does not have this package on sys.path still finds this very copy first."""
    require_collection()
    venv_bin = str(Path(sys.executable).parent)
    # The directory holding ansible_collections/pca/toolkit: collections/ (a link back) or site-packages.
    collections_dir = REPO / "collections" if CHECKOUT else REPO
    env = {
        "ANSIBLE_ROLES_PATH": str(COLLECTION / "roles"),
        "ANSIBLE_COLLECTIONS_PATH": os.pathsep.join(
            [str(collections_dir), "~/.ansible/collections", "/usr/share/ansible/collections"]
        ),
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin"),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
    }
    if CHECKOUT:
        env["ANSIBLE_CONFIG"] = str(REPO / "ansible.cfg")
    else:
        # The checkout's ansible.cfg enables it; installed, the environment does, beside any the user enables.
        enabled = [c for c in os.environ.get("ANSIBLE_CALLBACKS_ENABLED", "").split(",") if c.strip()]
        env["ANSIBLE_CALLBACKS_ENABLED"] = ",".join([*enabled, WARM_PLUGINS])
    return env


# Environment names whose values are secrets (API keys, hub tokens, passwords): kept out of artifacts.
SECRET_ENV = re.compile(r"(?i).*(KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH|COOKIE).*")


def _redact_env(value: object) -> object:
    """Copy of value where every environment mapping (key env or ansible_env) has its secret values replaced."""
    if isinstance(value, list):
        return [_redact_env(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for k, v in value.items():
        if k in ("env", "ansible_env") and isinstance(v, dict):
            out[k] = {n: "<redacted>" if SECRET_ENV.fullmatch(str(n)) else x for n, x in v.items()}
        else:
            out[k] = _redact_env(v)
    return out


def redact_artifacts(run_dir: Path, ident: str) -> None:
    """ansible-runner writes the controller's environment into artifacts/<ident>/command, and gathered facts
    (the managed host's environment: the controller's own when it is the host) into fact_cache/: drop secrets."""
    base = run_dir / "artifacts" / ident
    for path in [base / "command", *sorted((base / "fact_cache").glob("*"))]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        payload = data.get("__payload__") if isinstance(data, dict) else None
        if isinstance(payload, str):  # Ansible's jsonfile cache keeps the facts as one JSON string
            try:
                data = dict(data, __payload__=json.dumps(_redact_env(json.loads(payload))))
            except ValueError:
                continue
        else:
            data = _redact_env(data)
        files.write_atomic(path, json.dumps(data), 0o600)


def new_run_dir(base: Path | None = None) -> Path:
    base = (base or RUNS_DIR).absolute()
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for n in range(100):
        d = base / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            d.mkdir(parents=True)
            return d
        except FileExistsError:
            continue
    raise EnvironmentProblem(f"cannot create a run directory under {base}")


def run_playbook(
    playbook: str,
    inventory: Path,
    run_dir: Path,
    ident: str,
    *,
    limit: str | None = None,
    tags: str | None = None,
    check: bool = False,
    diff: bool = False,
    forks: int = 10,
    extravars: dict | None = None,
    on_change: Callable[[EventTracker], None] | None = None,
) -> tuple[object, EventTracker]:
    """One ansible-runner run of a playbook from playbooks/; events go to the tracker and the run's artifacts."""
    import ansible_runner

    cmd = []
    if check:
        cmd.append("--check")
    if diff:
        cmd.append("--diff")
    if tags:
        cmd += ["--tags", tags]
    tracker = EventTracker(on_change)
    try:
        r = ansible_runner.run(
            private_data_dir=str(run_dir),
            ident=ident,
            project_dir=str(PLAYBOOKS),
            playbook=playbook,
            inventory=str(inventory.resolve()),
            limit=limit,
            forks=forks,
            cmdline=" ".join(cmd) or None,
            envvars=ansible_env(),
            extravars=extravars or {},
            event_handler=tracker,
            quiet=True,
            suppress_env_files=True,  # env/ would hold extravars and envvars: keep secrets off disk
        )
    finally:
        redact_artifacts(run_dir, ident)
    return r, tracker


def plan_hosts(inventory: Path, run_dir: Path, limit: str | None = None, forks: int = 10) -> dict[str, dict]:
    """Phase 1: gpu_facts on every host; no changes. Raises CheckFailed naming each host that cannot be planned."""
    r, tracker = run_playbook("plan.yml", inventory, run_dir, "plan", limit=limit, forks=forks)
    plans_dir = run_dir / "plans"
    plans_dir.mkdir(exist_ok=True)
    plans = {}
    for host, facts in tracker.facts.items():
        if "toolkit_plan" in facts:
            plans[host] = facts["toolkit_plan"]
            # plans/HOST.json is exactly `toolkit plan --json` (bench reads it); the detection sits beside it.
            (plans_dir / f"{host}.json").write_text(json.dumps(plans[host], indent=2))
            (plans_dir / f"{host}.gpu.json").write_text(json.dumps(facts.get("toolkit_gpu"), indent=2))
    bad = {h: s for h, s in tracker.hosts.items() if s.failed or s.unreachable}
    if bad or r.rc != 0:
        lines = [f"{h}: {'; '.join(s.errors) or 'failed'}" for h, s in sorted(bad.items())]
        raise CheckFailed("planning failed, nothing was changed: " + (" | ".join(lines) or f"ansible rc {r.rc}"))
    return plans


def provision(
    inventory: Path,
    *,
    limit: str | None = None,
    check: bool = False,
    diff: bool = False,
    tags: str | None = None,
    forks: int = 10,
    playbook: str = "site.yml",
    on_plans: Callable[[Path, dict[str, dict]], None] | None = None,
    on_change: Callable[[EventTracker], None] | None = None,
) -> RunResult:
    """Both phases: plan every host (stop if one cannot be planned), then converge. Writes summary.json."""
    require_collection()
    check_inventory(inventory, limit)
    run_dir = new_run_dir()
    t0 = time.monotonic()
    plans = plan_hosts(inventory, run_dir, limit=limit, forks=forks)
    from toolkit.models.plan_lock import check_plans_locked

    check_plans_locked(inventory, plans)  # plan -> lock: a host pulling models converges only on locked ones
    t1 = time.monotonic()
    if on_plans:
        on_plans(run_dir, plans)
    t2 = time.monotonic()
    r, tracker = run_playbook(
        playbook,
        inventory,
        run_dir,
        "converge",
        limit=limit,
        tags=tags,
        check=check,
        diff=diff,
        forks=forks,
        on_change=on_change,
        # The plans shown are the plans applied: plan.yml reads each host's plans/HOST.json. A file,
        # not extra vars: Ansible templates extra vars, and a plan's FIM template ({{{prefix}}}) is
        # Continue's Handlebars, which Jinja would refuse; a lookup's text is never templated.
        extravars={"toolkit_shown_plans_dir": str(run_dir / "plans")},
    )
    seconds = {"plan": t1 - t0, "converge": time.monotonic() - t2}
    result = RunResult(run_dir, r.rc, r.status, tracker.hosts, plans, seconds)
    (run_dir / "summary.json").write_text(json.dumps(result.summary(), indent=2))
    return result
