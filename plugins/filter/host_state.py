"""Does what pca.toolkit.host_state read already match what a task would write?

Each filter answers True only when the task, run now, would report ok: the same type, owner,
group and mode (and, for a file, the sha1 of the exact content the task writes, which is what
ansible.builtin.copy compares). Anything else (absent, unreadable, a link, another owner, a
number where a name was read) answers False, and the task runs as it always did. So the filters
can make a converged host faster, never a drifted one wrong. Plain Python (tests import it).
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

try:
    from ansible.errors import AnsibleFilterError as _Base
except ImportError:  # imported by the tests without Ansible
    _Base = ValueError  # type: ignore[misc,assignment]

_OCTAL = re.compile(r"0?[0-7]{3,4}")


class StateQueryError(_Base):  # type: ignore[misc,valid-type]
    """A filter was asked something it cannot compare (a symbolic mode, a missing probe)."""


def _mode(mode: Any) -> int:
    text = str(mode)
    if not _OCTAL.fullmatch(text):
        raise StateQueryError(f"host_state filters compare octal modes like '0644', got {text!r}")
    return int(text, 8)


def _same_id(wanted: Any, name: str, number: int) -> bool:
    wanted = str(wanted)
    return wanted == name or (wanted.isdigit() and int(wanted) == number)


def _path(state: dict, path: str) -> dict:
    try:
        return state["paths"][path]
    except (KeyError, TypeError):
        raise StateQueryError(f"host_state did not read {path!r}; add it to the probe's paths") from None


def _attrs_match(st: dict, kind: str, owner: Any, group: Any, mode: Any) -> bool:
    wanted = _mode(mode)  # first: a mode it cannot compare is refused on every host, not only on some
    return (st.get("exists") is True and st.get("type") == kind
            and _same_id(owner, st["owner"], st["uid"]) and _same_id(group, st["group"], st["gid"])
            and int(st["mode"], 8) == wanted)


def state_has_dir(state: dict, path: str, owner: Any, group: Any, mode: Any) -> bool:
    """ansible.builtin.file state=directory with these owner, group and mode would report ok."""
    return _attrs_match(_path(state, path), "directory", owner, group, mode)


def state_has_file(state: dict, path: str, owner: Any, group: Any, mode: Any, content: Any = None,
                   checksum: str | None = None) -> bool:
    """ansible.builtin.copy of this content (or of a file with this sha1) would report ok.

    With neither content nor checksum only the attributes are compared (ansible.builtin.file on
    an existing file)."""
    st = _path(state, path)
    if not _attrs_match(st, "file", owner, group, mode):
        return False
    if content is not None:
        if not isinstance(content, str):
            raise StateQueryError(f"state_has_file compares text content for {path!r}, got {type(content).__name__}")
        checksum = hashlib.sha1(content.encode("utf-8")).hexdigest()
    return checksum is None or (st.get("checksum") is not None and st["checksum"] == checksum)


def state_has_block(state: dict, path: str, block: str, marker: str, owner: Any, group: Any, mode: Any,
                    marker_begin: str = "BEGIN", marker_end: str = "END") -> bool:
    """ansible.builtin.blockinfile (state=present, no prepend/append_newline) would report ok.

    blockinfile finds the last BEGIN and the last END marker line and puts the block between them;
    the file is unchanged exactly when those lines already are the markers around this block, each
    line ending in a newline (path must be in the read's paths and read)."""
    st = _path(state, path)
    content = (state.get("contents") or {}).get(path)
    if content is None or not block or not _attrs_match(st, "file", owner, group, mode):
        return False
    # Bytes, as blockinfile compares them (str.splitlines would also split at \x0c, \u2028, ...).
    begin = (marker.replace("{mark}", marker_begin) + "\n").encode()
    end = (marker.replace("{mark}", marker_end) + "\n").encode()
    text = (block if block.endswith("\n") else block + "\n").encode()
    wanted = [begin, *text.splitlines(True), end]
    lines = base64.b64decode(content).splitlines(True)
    starts = [i for i, line in enumerate(lines) if line == begin]
    ends = [i for i, line in enumerate(lines) if line == end]
    if not starts or not ends or starts[-1] >= ends[-1]:
        return False
    return lines[starts[-1]:ends[-1] + 1] == wanted


def state_has_user(state: dict, name: str, group: Any, home: str, shell: str) -> bool:
    """ansible.builtin.user with this primary group, home and shell (and nothing else) would report ok."""
    user = (state.get("users") or {}).get(name)
    return bool(user) and _same_id(group, user["group"], user["gid"]) and user["home"] == home \
        and user["shell"] == shell


def state_has_group(state: dict, name: str) -> bool:
    """ansible.builtin.group with just a name (no gid) would report ok."""
    return name in (state.get("groups") or {})


def state_unit_running(state: dict, unit: str, enabled: bool = True) -> bool:
    """systemd_service state=started (enabled as given) would report ok, and no daemon-reload is due."""
    props = (state.get("units") or {}).get(unit)
    if not props:
        return False
    return (props.get("LoadState") == "loaded" and props.get("ActiveState") == "active"
            and props.get("NeedDaemonReload") == "no"
            and props.get("UnitFileState") == ("enabled" if enabled else "disabled"))


def state_unit_enabled(state: dict, unit: str) -> bool:
    """systemd_service enabled=true (no state) would report ok, and no daemon-reload is due."""
    props = (state.get("units") or {}).get(unit)
    return bool(props) and props.get("LoadState") == "loaded" and props.get("UnitFileState") == "enabled" \
        and props.get("NeedDaemonReload") == "no"


def slurped(contents: dict, path: str) -> dict:
    """The read content of path in the shape ansible.builtin.slurp registers ({} when not read)."""
    return {"content": contents[path], "source": path} if path in (contents or {}) else {}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "state_has_dir": state_has_dir,
            "state_has_file": state_has_file,
            "state_has_user": state_has_user,
            "state_has_group": state_has_group,
            "state_has_block": state_has_block,
            "state_unit_running": state_unit_running,
            "state_unit_enabled": state_unit_enabled,
            "slurped": slurped,
        }
