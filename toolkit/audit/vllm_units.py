"""The vLLM units of a machine (or of a container's root seen from outside), read as systemd reads
them: drop-ins, ExecStart= resets, quoting and EnvironmentFile= precedence (systemd_unit). One
reader for every control that asks what is served: MODEL-001/002 (model, revision, HF_HOME) and
CONTINUE-001..003 (port, served names, max_model_len)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from toolkit.audit.static_checks import _in_root
from toolkit.audit.systemd_unit import service_environment, split_words

API_SERVER = "vllm.entrypoints.openai.api_server"


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
            if problem or not argv or not is_vllm_command(name, argv):
                continue  # a line systemd would refuse, or not vLLM: nothing this reader can say
            out.append(VllmUnit(name, argv, dict(se.environment)))
    return out
