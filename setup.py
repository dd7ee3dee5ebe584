"""The wheel also carries the Ansible collection pca.toolkit, as site-packages/ansible_collections/
pca/toolkit: ansible-core scans every sys.path entry for ansible_collections/ (COLLECTIONS_SCAN_SYS_PATH,
on by default), so `pip install` alone gives `toolkit provision` and `ansible-playbook pca.toolkit.site`
their roles, playbooks and plugins. The tree is exactly what `ansible-galaxy collection build` puts in
the tarball (galaxy.yml's build_ignore is the one list of what ships), unpacked.

Everything else is in pyproject.toml.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class build_py_with_collection(build_py):
    def run(self) -> None:
        super().run()
        # An editable install is the checkout: it finds the collection through collections/ (ansible.cfg).
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "ansible_collections" / "pca" / "toolkit"
        with tempfile.TemporaryDirectory() as out:
            subprocess.run(
                [sys.executable, "-m", "ansible.cli.galaxy", "collection", "build", "--force",
                 "--output-path", out, str(ROOT)],
                check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            (tarball,) = Path(out).glob("pca-toolkit-*.tar.gz")
            shutil.rmtree(target, ignore_errors=True)  # nothing stale from an earlier build in build/
            target.mkdir(parents=True)
            with tarfile.open(tarball) as tar:
                # The data filter (Python >= 3.10.12) refuses links and paths that climb out of target.
                kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(target, **kwargs)


setup(cmdclass={"build_py": build_py_with_collection})
