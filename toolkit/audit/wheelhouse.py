"""The audit agent's offline install set, built once on the controller: the toolkit's wheel and a
wheelhouse of what the agent imports at run time, with a SHA256SUMS manifest the audit_agent role
checks on every host before it installs anything (the hosts reach no package registry).

    python -m toolkit.audit.wheelhouse DIR      # then: -e audit_agent_wheelhouse=DIR

Only the agent's runtime needs are shipped (the CLI, libpcap binding, policy YAML), not the
provisioning stack (ansible, lancedb, huggingface-hub): the toolkit wheel is installed with
--no-deps and these alongside it.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
AGENT_REQUIREMENTS = ("pyyaml", "scapy", "typer", "rich", "click")
MANIFEST = "SHA256SUMS"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: Path) -> dict[str, str]:
    """sha256sum-format manifest of every wheel in ``directory``; returns name -> digest."""
    sums = {p.name: sha256(p) for p in sorted(directory.glob("*.whl"))}
    (directory / MANIFEST).write_text("".join(f"{d}  {n}\n" for n, d in sums.items()))
    return sums


def build(directory: Path, python: str = sys.executable) -> dict[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    constraints = REPO / ".ci" / "constraints.txt"
    pip = [python, "-m", "pip", "--disable-pip-version-check", "-q"]
    # The toolkit's build needs setuptools, wheel and ansible-core (setup.py builds the collection the
    # wheel carries): when this Python has them, build with them rather than fetch them all again
    # into an isolated build environment.
    here = subprocess.run([python, "-c", "import ansible, setuptools, wheel"], capture_output=True).returncode == 0
    isolation = ["--no-build-isolation"] if here else []
    subprocess.run([*pip, "wheel", "--no-deps", *isolation, "-w", str(directory), str(REPO)], check=True)
    subprocess.run([*pip, "wheel", "-w", str(directory), "-c", str(constraints), *AGENT_REQUIREMENTS], check=True)
    return write_manifest(directory)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m toolkit.audit.wheelhouse DIR", file=sys.stderr)
        return 2
    try:
        sums = build(Path(argv[0]))
    except subprocess.CalledProcessError as err:
        print(f"building the wheelhouse failed: {err}", file=sys.stderr)
        return 3
    print(f"{len(sums)} wheel(s) in {argv[0]}, manifest {MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
