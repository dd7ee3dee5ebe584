"""The vLLM units of a machine (or of a container's root seen from outside), read as systemd reads
them: drop-ins, ExecStart= resets, quoting and EnvironmentFile= precedence (systemd_unit). One
reader for every control that asks what is served: MODEL-001/002 (model, revision, HF_HOME) and
CONTINUE-001..003 (port, served names, max_model_len). A container-mode unit (`podman run ... IMAGE
ARGS`, the vllm role's container method) is read as the server inside sees it: the image's entry
point (`vllm serve`) with the words after the image."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from toolkit.audit.static_checks import _in_root
from toolkit.audit.systemd_unit import service_environment, split_words

API_SERVER = "vllm.entrypoints.openai.api_server"
CONTAINER_RUNTIMES = frozenset({"podman", "docker"})
# `podman run` / `docker run` options that take no value word (a boolean's value, if any, comes
# with `=`); every other option takes the next word, as nearly all of them do.
_RUN_FLAGS = frozenset(
    {
        "--rm", "--detach", "-d", "--interactive", "-i", "--tty", "-t", "--privileged", "--init",
        "--read-only", "--read-only-tmpfs", "--replace", "--rmi", "--no-healthcheck", "--no-hosts",
        "--publish-all", "-P", "--quiet", "-q", "--sig-proxy", "--env-host", "--http-proxy",
        "--oom-kill-disable", "--tls-verify", "--help",
    }
)  # fmt: skip


@dataclass(frozen=True)
class VllmUnit:
    unit: str
    argv: list[str]
    environment: dict[str, str] = field(default_factory=dict)

    def arg(self, name: str) -> str | None:
        return arg(self.argv, name)

    @property
    def model(self) -> str | None:
        return served_model_arg(self.argv)

    @property
    def port(self) -> int | None:
        p = self.arg("--port")
        return int(p) if p and p.isdigit() else None

    @property
    def max_model_len(self) -> int | None:
        m = self.arg("--max-model-len")
        return int(m) if m and m.isdigit() else None

    @property
    def served_names(self) -> list[str]:
        """--served-model-name takes one or more words (vLLM's nargs="+"), up to the next flag."""
        if "--served-model-name" not in self.argv:
            return []
        names = []
        for a in self.argv[self.argv.index("--served-model-name") + 1 :]:
            if a.startswith("--"):
                break
            names.append(a)
        return names


def arg(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def served_model_arg(argv: list[str]) -> str | None:
    """The model a vLLM command line serves: `--model X`, or `vllm serve X` (positional)."""
    model = arg(argv, "--model")
    if model is None and "serve" in argv[:3]:
        i = argv.index("serve") + 1
        if i < len(argv) and not argv[i].startswith("-"):
            model = argv[i]
    return model


def container_server(argv: list[str]) -> tuple[list[str], dict[str, str]] | None:
    """For `podman run OPTIONS IMAGE [ARGS]`: the server's argv (the image's entry point `vllm serve`
    with ARGS, or ARGS themselves when they name vllm or python) and the environment given with -e,
    where a value under a -v destination is the host path it comes from. None for any other command."""
    if Path(argv[0]).name not in CONTAINER_RUNTIMES or argv[1:2] != ["run"]:
        return None
    env: dict[str, str | None] = {}
    volumes: list[tuple[str, str]] = []
    i = 2
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        opt, eq, value = argv[i].partition("=")
        if not eq and opt not in _RUN_FLAGS:
            i += 1
            value = argv[i] if i < len(argv) else ""
        if opt in ("-e", "--env"):
            k, has, v = value.partition("=")
            env[k] = v if has else None
        elif opt in ("-v", "--volume") and ":" in value:
            src, dst = value.split(":")[:2]
            volumes.append((dst.rstrip("/") or "/", src.rstrip("/") or "/"))
        i += 1
    i += argv[i : i + 1] == ["--"]
    if i >= len(argv):
        return None  # no image
    args = argv[i + 1 :]
    if not (args and Path(args[0]).name in ("vllm", "python", "python3")):
        args = ["vllm", "serve", *args]
    out: dict[str, str] = {}
    for k, v in env.items():
        if v is None:
            continue  # passed from the unit's own environment: the caller has it
        for dst, src in volumes:
            if v == dst or v.startswith(dst + "/"):
                v = src + v[len(dst) :]
                break
        out[k] = v
    return args, out


def is_vllm_command(unit: str, argv: list[str]) -> bool:
    """vLLM's CLI, its OpenAI server module, or a vllm-*.service unit whose command names a model."""
    return (
        Path(argv[0]).name == "vllm"
        or API_SERVER in argv
        or (unit.startswith("vllm-") and served_model_arg(argv) is not None)
    )


def vllm_units(unit_dirs: list[Path], root: Path = Path("/")) -> list[VllmUnit]:
    """Every ExecStart= that runs vLLM, in unit-name order, with the unit's environment."""
    read, glob = _in_root(root)
    names = sorted({u.name for d in unit_dirs if d.is_dir() for u in d.glob("*.service")})
    out = []
    for name in names:
        se = service_environment(name, unit_dirs, read, glob, root)
        if se.masked:
            continue
        for line in se.exec_start:
            argv, problem = split_words(line.strip().lstrip("@-:+!"), relax=True)
            if problem or not argv:
                continue  # a line systemd would refuse: nothing this reader can say
            environment = dict(se.environment)
            inside = container_server(argv)
            if inside is not None:
                argv, passed = inside
                environment.update(passed)
            if is_vllm_command(name, argv):
                out.append(VllmUnit(name, argv, environment))
    return out
