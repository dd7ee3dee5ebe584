#!/usr/bin/python
"""Ansible module model_verify: verify model files on the host against the lock, with the CLI's own code."""

from __future__ import annotations

DOCUMENTATION = r"""
module: model_verify
short_description: Validate a model lock, check the model store, verify snapshots against the lock
description:
  - One piece of Python (module_utils/model_verify, the code of C(toolkit models verify)) for every step.
  - C(mode=validate) (run on the controller) reads C(lock_file) (size, UTF-8, NUL, YAML without aliases or
    duplicate keys), validates it completely and, with C(mirror_dir), resolves every selected file under the
    mirror (symlinks only into that model's own blobs/). It returns the normalised lock and the file list the
    copy tasks use; nothing else reads the lock's paths.
  - C(mode=store) (on the host, before any file task) refuses a store where a directory on the way to a
    locked file is a symlink, not owned by root, or writable by anyone but root, or a locked file is a symlink.
  - C(mode=verify) re-hashes every locked file of the selected models in C(cache_dir), in parallel. A model
    whose files all match gets a marker C(<marker_dir>/<models--ORG--NAME>@<REV>) holding the digest of its
    lock entry, written to a fresh O_EXCL temp file and renamed (never through a symlink). A model with a
    mismatched, missing, unexpected or refused file loses its marker, its snapshot is moved to
    C(<quarantine_dir>) (when C(quarantine) is true) and the module fails naming the file, expected and found hash.
  - C(mode=markers) checks, without hashing, that every selected model has a valid marker for its locked
    revision; it fails naming the models that have none (a server must not start on them).
options:
  mode:
    description: validate, store, verify or markers.
    type: str
    default: verify
    choices: [validate, store, verify, markers]
  lock:
    description: The parsed model lock (C(version), C(models)); validated again here.
    type: dict
  lock_file:
    description: Path of the lock file on the machine running the module (mode validate).
    type: path
  mirror_dir:
    description: The controller's mirror (HF cache layout) to resolve the selected files under (mode validate).
    type: path
  cache_dir:
    description: The Hugging Face hub cache (C(HF_HOME)/hub).
    type: path
  repos:
    description: Repos to act on; default every repo in the lock. A repo that is not locked is an error.
    type: list
    elements: str
    default: []
  marker_dir:
    description: Where the verified markers live (root-only, outside the store the servers read).
    type: path
  quarantine_dir:
    description: Where a failed snapshot is moved (root-only).
    type: path
  quarantine:
    description: Move a failed model's snapshot out of the cache so nothing can load it.
    type: bool
    default: true
  workers:
    description: Hashing threads; 0 means one per core.
    type: int
    default: 0
author: toolkit maintainers
"""

EXAMPLES = r"""
- name: Validate the lock on the controller before any file task
  pca.toolkit.model_verify:
    mode: validate
    lock_file: "{{ inventory_dir }}/models.lock.yaml"
    mirror_dir: /srv/models
  delegate_to: localhost
  register: checked

- name: Verify the models on this host before any server starts
  pca.toolkit.model_verify:
    lock: "{{ checked.lock }}"
    cache_dir: /var/lib/toolkit/hf/hub
    marker_dir: /var/lib/toolkit/model-store/verified
    quarantine_dir: /var/lib/toolkit/model-store/quarantine
"""

RETURN = r"""
lock:
  description: The validated, normalised lock (mode validate).
  returned: mode validate
  type: dict
files:
  description: "One entry per selected file: repo, revision, path, dir, dest (relative to the hub cache), src (mirror)."
  returned: mode validate
  type: list
verified:
  description: Repos whose every file matched the lock (verify) or that have a valid marker (markers).
  returned: modes verify and markers
  type: list
problems:
  description: One line per mismatched, missing, unexpected or refused file.
  returned: mode verify
  type: list
ansible_facts:
  description: model_store_verified (the verified repos).
  returned: mode verify
  type: dict
"""

import errno  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import stat  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.pca.toolkit.plugins.module_utils.model_lock import (  # noqa: E402
    LockError,
    entry_digest,
    lock_to_data,
    marker_name,
    parse_lock,
    read_lock,
)
from ansible_collections.pca.toolkit.plugins.module_utils.model_verify import (  # noqa: E402
    Refused,
    blobs_dir,
    open_locked,
    snapshot_path,
    verify_models,
)


class Unsafe(Exception):
    """A path the module must write through is a symlink, or writable by someone other than root."""


def private_dir(path: str, create: bool) -> None:
    """path is a real directory, ours (root when we are root), writable by nobody else; created 0700 if asked."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not create:
            return
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        os.mkdir(path, 0o700)
        st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise Unsafe(f"{path} is not a real directory (a symlink?)")
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise Unsafe(
            f"{path} must be owned by uid {os.geteuid()} and writable by nobody else "
            f"(uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o})"
        )


def read_marker(path: str) -> str | None:
    """A marker's digest, never through a symlink (a planted link reads as no marker)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            return ""
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        return os.read(fd, 256).decode("ascii", "replace").strip()
    finally:
        os.close(fd)


def write_marker(path: str, digest: str) -> None:
    """A fresh temp file (mkstemp: O_CREAT|O_EXCL, never follows a link), fsync, then rename over the marker."""
    fd, tmp = tempfile.mkstemp(prefix=".marker-", dir=os.path.dirname(path))
    try:
        os.write(fd, (digest + "\n").encode())
        os.fchmod(fd, 0o644)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def check_store(cache_dir: str, models) -> list[str]:
    """Problems that would let a copy be redirected or a verified file be replaced by a non-root user."""
    problems = []
    root = os.path.realpath(cache_dir)
    for m in models:
        snap = snapshot_path(root, m)
        dirs = {os.path.dirname(snapshot_path(root, m)), snap}
        for f in m.files:
            parts = f.path.split("/")[:-1]
            for i in range(len(parts) + 1):
                dirs.add(os.path.join(snap, *parts[:i]))
        dirs |= {root, os.path.join(root, m.cache_dirname)}
        for d in sorted(dirs):
            try:
                st = os.lstat(d)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                problems.append(f"{d}: not a real directory (a symlink?)")
            elif st.st_uid != 0 or st.st_mode & 0o022:
                problems.append(
                    f"{d}: must be owned by root and writable only by root "
                    f"(uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o})"
                )
        for f in m.files:
            full = os.path.join(snap, *f.path.split("/"))
            try:
                st = os.lstat(full)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if stat.S_ISLNK(st.st_mode):
                try:
                    os.close(open_locked(snap, f.path, blobs_dir(snap)))
                except (Refused, OSError) as err:
                    problems.append(f"{full}: {err}")
            elif not stat.S_ISREG(st.st_mode):
                problems.append(f"{full}: not a regular file")
    return problems


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "mode": {"type": "str", "default": "verify", "choices": ["validate", "store", "verify", "markers"]},
            "lock": {"type": "dict"},
            "lock_file": {"type": "path"},
            "mirror_dir": {"type": "path"},
            "cache_dir": {"type": "path"},
            "repos": {"type": "list", "elements": "str", "default": []},
            "marker_dir": {"type": "path"},
            "quarantine_dir": {"type": "path"},
            "quarantine": {"type": "bool", "default": True},
            "workers": {"type": "int", "default": 0},
        },
        required_one_of=[("lock", "lock_file")],
        required_if=[
            ("mode", "store", ("cache_dir",)),
            ("mode", "verify", ("cache_dir", "marker_dir", "quarantine_dir")),
            ("mode", "markers", ("marker_dir",)),
        ],
        supports_check_mode=True,
    )
    p = module.params
    try:
        lock = parse_lock(p["lock"]) if p["lock"] is not None else read_lock(p["lock_file"])
        models = [lock.model(r) for r in p["repos"]] if p["repos"] else list(lock.models)
    except LockError as err:
        where = f"{p['lock_file']}: " if p["lock"] is None else ""
        module.fail_json(msg=f"bad model lock: {where}{err}")

    if p["mode"] == "validate":
        files, problems = [], []
        for m in models:
            for f in m.files:
                entry = {
                    "repo": m.repo,
                    "revision": m.revision,
                    "path": f.path,
                    "dir": "/".join([m.cache_dirname, "snapshots", m.revision] + f.path.split("/")[:-1]),
                    "dest": "/".join([m.cache_dirname, "snapshots", m.revision, f.path]),
                }
                if f.sha256:
                    entry["sha256"] = f.sha256
                if p["mirror_dir"]:
                    snap = snapshot_path(os.path.realpath(p["mirror_dir"]), m)
                    try:
                        fd = open_locked(snap, f.path, blobs_dir(snap))
                        os.close(fd)
                        entry["src"] = os.path.realpath(os.path.join(snap, *f.path.split("/")))
                    except FileNotFoundError:
                        problems.append(
                            f"{m.repo}: {f.path}: not in the mirror {p['mirror_dir']} (run toolkit models pull)"
                        )
                    except (Refused, OSError) as err:
                        problems.append(f"{m.repo}: {f.path}: {err}")
                files.append(entry)
        if problems:
            module.fail_json(msg=f"mirror {p['mirror_dir']}: " + " | ".join(problems), problems=problems)
        module.exit_json(
            changed=False,
            lock=lock_to_data(lock),
            selected=[m.repo for m in models],
            files=files,
            dirs=sorted({e["dir"] for e in files}),
        )

    if p["mode"] == "markers":
        verified, missing = [], []
        for m in models:
            current = read_marker(os.path.join(p["marker_dir"], marker_name(m)))
            (verified if current == entry_digest(m) else missing).append(m.repo)
        if missing:
            module.fail_json(
                msg="no valid verification marker for the locked revision of: "
                + ", ".join(f"{lock.model(r).repo}@{lock.model(r).revision}" for r in missing)
                + " (run the model_store role; a server must not start on unverified weights)",
                verified=verified,
                missing=missing,
            )
        module.exit_json(changed=False, verified=verified, missing=[])

    if p["mode"] == "store":
        problems = check_store(p["cache_dir"], models)
        if problems:
            module.fail_json(
                msg="unsafe model store, refusing to write into it: " + " | ".join(problems), problems=problems
            )
        module.exit_json(changed=False, problems=[])

    try:
        for d in (p["marker_dir"], p["quarantine_dir"]):
            private_dir(d, create=not module.check_mode)
    except (Unsafe, OSError) as err:
        module.fail_json(msg=f"unsafe state directory: {err}")

    cache = os.path.realpath(p["cache_dir"])
    report = verify_models([(m, snapshot_path(cache, m)) for m in models], workers=p["workers"] or None)
    bad = set(report.bad_repos())
    changed = False
    quarantined = []
    for m in models:
        marker = os.path.join(p["marker_dir"], marker_name(m))
        digest = entry_digest(m)
        current = read_marker(marker)
        if m.repo in bad:
            if current is not None or os.path.lexists(marker):
                changed = True
                if not module.check_mode and os.path.lexists(marker):
                    os.unlink(marker)
            snap = snapshot_path(cache, m)
            if p["quarantine"] and os.path.lexists(snap):
                parent = os.path.join(p["quarantine_dir"], m.cache_dirname)
                dest = os.path.join(parent, f"{m.revision}.{time.strftime('%Y%m%dT%H%M%S')}")
                changed = True
                if not module.check_mode:
                    if os.path.islink(snap):
                        os.unlink(snap)  # a planted link: remove it, never move what it points at
                    elif os.path.realpath(os.path.dirname(snap)) == os.path.dirname(snap):
                        private_dir(parent, create=True)
                        shutil.move(snap, dest)
                quarantined.append(dest)
        elif current != digest:
            changed = True
            if not module.check_mode:
                write_marker(marker, digest)

    verified = sorted(m.repo for m in models if m.repo not in bad)
    problems = [r.line() for r in report.problems]
    result = {
        "changed": changed,
        "verified": verified,
        "problems": problems,
        "quarantined": quarantined,
        "ansible_facts": {"model_store_verified": verified},
    }
    if bad:
        module.fail_json(
            msg=f"model verification failed on this host ({len(problems)} problem(s)), nothing of "
            f"{', '.join(sorted(bad))} is servable: " + " | ".join(problems),
            **result,
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
