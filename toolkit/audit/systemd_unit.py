"""A service's environment read the way systemd builds it (pure parsing; files are read by the caller).

What systemd does, and where it says so:

* Unit search path and drop-ins (systemd.unit(5)): the unit file is the first one found along the
  search path; drop-ins come from ``NAME.d/``, the template's ``T@.service.d/``, every dash prefix
  (``a-b-.service.d/``, ``a-.service.d/``) and ``service.d/`` in every directory of the path. They
  are applied after the unit, in lexical order of their file names whatever directory they are
  in; of two with one name, the one in the earlier directory (or more specific .d) wins. A unit
  or drop-in linked to /dev/null is masked.
* Syntax (systemd.syntax(7), src/shared/conf-parser.c): ``#``/``;`` comment lines (also inside a
  continued line), a trailing backslash joins the next line with a space, ``[Section]`` headers;
  only [Service] keys count, and keys are case-sensitive.
* ``Environment=`` (systemd.exec(5), config_parse_environ): words split like
  ``extract_first_word(EXTRACT_CUNESCAPE|EXTRACT_UNQUOTE)``: quotes anywhere in a word, C escapes
  (``\\x31`` is ``1``) inside quotes as well, an unknown escape or an unbalanced quote is
  "Invalid syntax, ignoring" for the rest of the line; ``%%`` is ``%`` and other ``%`` specifiers
  are resolved; an empty assignment resets the list; a later assignment of a name replaces the
  earlier one.
* ``EnvironmentFile=``: read when the process starts; its values override ``Environment=``
  whatever the order of the lines; an empty assignment resets the list; ``-`` makes a missing
  file fine; a glob is allowed. File syntax per src/basic/env-file.c (shell-like quoting).
* ``UnsetEnvironment=``: applied last, to both; ``NAME`` removes any value, ``NAME=VALUE`` only
  that exact assignment.

What cannot be decided from the files (a specifier whose value depends on the host, an
unparsable line) is returned as ``uncertain`` so the control says INCONCLUSIVE, never PASS.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

WHITESPACE = " \t\n\r"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# systemd's system unit search path (systemd.unit(5), "System Unit Search Path"), highest first.
# /lib/systemd/system is where Debian without merged /usr keeps package units.
SYSTEM_UNIT_PATH = (
    "etc/systemd/system.control",
    "run/systemd/system.control",
    "run/systemd/transient",
    "run/systemd/generator.early",
    "etc/systemd/system",
    "etc/systemd/system.attached",
    "run/systemd/system",
    "run/systemd/system.attached",
    "run/systemd/generator",
    "usr/local/lib/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
    "run/systemd/generator.late",
)
# Specifiers systemd resolves in Environment= (systemd.unit(5) "Specifiers"); anything else after
# a % makes systemd ignore that assignment.
_SPECIFIERS = set("aAbBCdEfgGhHiIjJlLmMnNopPqrRsStTuUvVwWyY")


class SyntaxProblem(ValueError):
    """systemd would log "Invalid syntax, ignoring" here."""


def _cunescape_one(s: str, i: int) -> tuple[str, int]:
    """One C escape after a backslash at s[i-1] (src/basic/escape.c cunescape_one): (char, length)."""
    simple = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
    simple.update({"\\": "\\", '"': '"', "'": "'", "s": " "})
    c = s[i] if i < len(s) else ""
    if c in simple:
        return simple[c], 1
    for lead, digits in (("x", 2), ("u", 4), ("U", 8)):
        if c == lead:
            h = s[i + 1 : i + 1 + digits]
            if len(h) != digits or not re.fullmatch(r"[0-9a-fA-F]+", h):
                raise SyntaxProblem(f"bad \\{lead} escape")
            v = int(h, 16)
            if v == 0 or v > 0x10FFFF or 0xD800 <= v <= 0xDFFF:
                raise SyntaxProblem(f"\\{lead}{h} is not a character systemd accepts")
            return chr(v), 1 + digits
    if c and c in "01234567":
        o = s[i : i + 3]
        if len(o) != 3 or not re.fullmatch(r"[0-7]{3}", o) or int(o, 8) == 0 or int(o, 8) > 255:
            raise SyntaxProblem("bad octal escape")
        return chr(int(o, 8)), 3
    raise SyntaxProblem(f"unknown escape \\{c}" if c else "trailing backslash")


def split_words(value: str, relax: bool = False) -> tuple[list[str], str | None]:
    """Words of an Environment=/UnsetEnvironment= value, and the syntax error that stopped the
    split (systemd keeps the words before it and ignores the rest of the line). ``relax``: an
    escape systemd cannot decode is kept as written (ExecStart=, "Ignoring unknown escape
    sequences")."""
    words: list[str] = []
    i, n = 0, len(value)
    while True:
        while i < n and value[i] in WHITESPACE:
            i += 1
        if i >= n:
            return words, None
        word: list[str] = []
        quote = ""
        try:
            while i < n:
                c = value[i]
                if c == "\\":
                    try:
                        ch, used = _cunescape_one(value, i + 1)
                    except SyntaxProblem:
                        if not relax or i + 1 >= n:
                            raise
                        ch, used = "\\" + value[i + 1], 1
                    word.append(ch)
                    i += 1 + used
                    continue
                if quote:
                    if c == quote:
                        quote = ""
                    else:
                        word.append(c)
                elif c in "'\"":
                    quote = c
                elif c in WHITESPACE:
                    break
                else:
                    word.append(c)
                i += 1
            if quote:
                raise SyntaxProblem(f"unbalanced {quote} quote")
        except SyntaxProblem as err:
            return words, str(err)
        words.append("".join(word))


def resolve_specifiers(word: str) -> tuple[str, bool]:
    """(word with %% resolved, whether it holds a host-dependent specifier). An unknown
    specifier raises: systemd ignores that assignment."""
    out, certain, i = [], True, 0
    while i < len(word):
        if word[i] == "%":
            nxt = word[i + 1 : i + 2]
            if nxt == "%":
                out.append("%")
            elif nxt in _SPECIFIERS and nxt:
                out.append(word[i : i + 2])
                certain = False
            else:
                raise SyntaxProblem(f"unknown specifier %{nxt}")
            i += 2
        else:
            out.append(word[i])
            i += 1
    return "".join(out), not certain


@dataclass
class Assignment:
    file: str
    line: int
    section: str
    key: str
    value: str


def parse_unit_file(text: str, name: str = "") -> tuple[list[Assignment], list[str]]:
    """Every ``Key=value`` with its section, as systemd's config parser reads the file, and the
    lines systemd would complain about (an invalid section header fails the whole unit)."""
    out: list[Assignment] = []
    problems: list[str] = []
    section = ""
    continuation: str | None = None
    start = 0

    def take(line: str, at: int) -> None:
        nonlocal section
        line = line.strip(WHITESPACE)
        if not line:
            return
        if any("\udc80" <= ch <= "\udcff" for ch in line):
            problems.append(f"{Path(name).name}:{at}: not UTF-8 (systemd ignores the line)")
            return
        if line.startswith("["):
            if not line.endswith("]"):
                problems.append(f"{Path(name).name}:{at}: invalid section header (systemd refuses the unit)")
            section = line[1:-1]
            return
        if "=" in line:
            key, _, value = line.partition("=")
            out.append(Assignment(name, at, section, key.strip(WHITESPACE), value.strip(WHITESPACE)))

    for lineno, raw in enumerate(text.split("\n"), 1):
        stripped = raw.lstrip(WHITESPACE)
        if stripped and stripped[0] in "#;":
            continue  # comments are skipped even inside a continued line
        line = raw if continuation is None else continuation + raw
        if continuation is None:
            start = lineno
        escaped = False
        for ch in line:
            escaped = (not escaped) and ch == "\\"
        if escaped:
            continuation = line[:-1] + " "
            continue
        continuation = None
        take(line, start)
    if continuation is not None:
        take(continuation, start)
    return out, problems


def parse_env_file(text: str) -> tuple[dict[str, str], list[str]]:
    """An EnvironmentFile= as src/basic/env-file.c reads it: (assignments, ambiguities)."""
    env: dict[str, str] = {}
    notes: list[str] = []
    key: list[str] = []
    value: list[str] = []
    state = "pre_key"
    last_key_ws: int | None = None
    last_val_ws: int | None = None
    line = 1

    def push() -> None:
        k = "".join(key[:last_key_ws] if last_key_ws is not None else key)
        v = "".join(value)
        if state == "value" and last_val_ws is not None:
            v = "".join(value[:last_val_ws])
        if _NAME.fullmatch(k):
            env[k] = v
        # systemd drops assignments with an invalid name (strv_env_clean): so do we.

    for c in text:
        if c == "\n":
            line += 1
        if state == "pre_key":
            if c in "#;":
                state = "comment"
            elif c not in WHITESPACE:
                state, key, value, last_key_ws = "key", [c], [], None
        elif state == "key":
            if c in "\n\r":
                state = "pre_key"
            elif c == "=":
                state, last_val_ws = "pre_value", None
            else:
                if c not in WHITESPACE:
                    last_key_ws = None
                elif last_key_ws is None:
                    last_key_ws = len(key)
                key.append(c)
        elif state in ("pre_value", "value"):
            if c in "\n\r":
                push()
                state = "pre_key"
            elif state == "pre_value" and c == "'":
                state = "single"
            elif state == "pre_value" and c == '"':
                state = "double"
            elif c == "\\":
                state, last_val_ws = "value_escape", None
            elif state == "pre_value" and c in WHITESPACE:
                pass
            else:
                state = "value"
                if c not in WHITESPACE:
                    last_val_ws = None
                elif last_val_ws is None:
                    last_val_ws = len(value)
                value.append(c)
        elif state == "value_escape":
            state = "value"
            if c not in "\n\r":
                value.append(c)
        elif state == "single":
            if c == "'":
                state = "pre_value"
            else:
                value.append(c)
        elif state == "double":
            if c == '"':
                state = "pre_value"
            elif c == "\\":
                state = "double_escape"
            else:
                value.append(c)
        elif state == "double_escape":
            state = "double"
            if c in '"\\`$':
                value.append(c)
            elif c != "\n":
                value += ["\\", c]
        elif state == "comment":
            if c == "\\":
                state = "comment_escape"
            elif c in "\n\r":
                state = "pre_key"
        elif state == "comment_escape":
            # systemd < 254 carries the comment on to the next line; 254 and later do not.
            if c in "\n\r":
                notes.append(
                    f"line {line - 1}: a comment ends in a backslash (before systemd 254 the next line is comment too)"
                )
                state = "pre_key"
            else:
                state = "comment"
    if state in ("pre_value", "value", "value_escape", "single", "double", "double_escape"):
        if state in ("single", "double", "double_escape"):
            notes.append("unterminated quote at the end of the file")
        push()
    return env, notes


@dataclass
class ServiceEnvironment:
    """What the service's main process gets from its unit files (not the manager's own env)."""

    unit: str
    files: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    exec_start: list[str] = field(default_factory=list)
    env_files: list[str] = field(default_factory=list)
    missing_files: list[str] = field(default_factory=list)
    uncertain: dict[str, str] = field(default_factory=dict)  # variable (or "*") -> why
    masked: bool = False
    refused: str | None = None  # systemd would not load the unit at all
    text: str = ""  # every file read, joined: a unit systemd cannot parse is still recognisable


def dropin_dir_names(unit: str) -> list[str]:
    """The .d directory names systemd looks in for ``unit``, most specific first."""
    stem, dot, suffix = unit.rpartition(".")
    if not dot:
        return [f"{unit}.d"]
    names = [f"{unit}.d"]
    if "@" in stem and not stem.endswith("@"):
        names.append(f"{stem.split('@', 1)[0]}@.{suffix}.d")
    parts = stem.split("-")
    for k in range(len(parts) - 1, 0, -1):
        prefix = "-".join(parts[:k]) + "-"
        if prefix != stem:
            names.append(f"{prefix}.{suffix}.d")
    names.append(f"{suffix}.d")
    return names


def read_in_root(root: Path, path: Path) -> str:
    """Read ``path`` (a path under ``root``) following its symlinks the way the judged system
    would: an absolute link target (``/lib/systemd/system/x.service``) is resolved inside root,
    not on the auditing machine."""
    for _ in range(40):
        if not path.is_symlink():
            return path.read_text(errors="surrogateescape")
        target = Path(os.readlink(path))
        path = root / str(target).lstrip("/") if target.is_absolute() else path.parent / target
    raise OSError(errno.ELOOP, "too many levels of symbolic links", str(path))


def _masked(path: Path) -> bool:
    try:
        return path.is_symlink() and PurePosixPath(path.readlink()) == PurePosixPath("/dev/null")
    except OSError:
        return False


def unit_sources(unit: str, unit_dirs: list[Path]) -> tuple[Path | None, list[Path], bool]:
    """(unit file, drop-ins in the order systemd applies them, masked)."""
    main = None
    names = [unit]
    stem, _, suffix = unit.rpartition(".")
    if "@" in stem and not stem.endswith("@"):
        names.append(f"{stem.split('@', 1)[0]}@.{suffix}")
    for d in unit_dirs:
        for n in names:
            p = d / n
            if p.is_file() or p.is_symlink():
                main = p
                break
        if main is not None:
            break
    if main is not None and _masked(main):
        return main, [], True
    chosen: dict[str, Path] = {}
    for d in unit_dirs:
        for dn in dropin_dir_names(unit):
            dd = d / dn
            if not dd.is_dir():
                continue
            for conf in dd.iterdir():
                if conf.name.endswith(".conf") and conf.name not in chosen:
                    chosen[conf.name] = conf
    ordered = [chosen[k] for k in sorted(chosen, key=lambda s: s.encode())]
    return main, [p for p in ordered if not _masked(p)], False


def service_environment(
    unit: str, unit_dirs: list[Path], read, glob=None, root: Path = Path("/")
) -> ServiceEnvironment:
    """Build ``unit``'s environment. ``read(path_str) -> str`` reads a file inside the judged root
    (raises OSError); ``glob(pattern) -> list[str]`` expands an EnvironmentFile= wildcard there;
    unit files (under ``root``) are read with their links resolved inside it."""
    se = ServiceEnvironment(unit)
    main, dropins, masked = unit_sources(unit, unit_dirs)
    if masked:
        se.masked = True
        return se
    sources = ([main] if main is not None else []) + dropins
    env_list: dict[str, str] = {}
    env_files: list[str] = []
    unset: list[str] = []
    for src in sources:
        se.files.append(str(src))
        text = read_in_root(root, src)
        se.text += text
        assignments, problems = parse_unit_file(text, str(src))
        for problem in problems:
            se.uncertain.setdefault("*", problem)
            if "refuses the unit" in problem:
                se.refused = se.refused or problem
        for a in assignments:
            if a.section != "Service":
                continue
            where = f"{Path(a.file).name}:{a.line}"
            if a.key == "Environment":
                if not a.value:
                    env_list.clear()
                    continue
                for name, val in _assignments(a.value, where, se):
                    env_list.pop(name, None)  # a later assignment replaces (and moves) it
                    env_list[name] = val
            elif a.key == "EnvironmentFile":
                if not a.value:
                    env_files.clear()
                elif "%" in a.value:
                    se.uncertain["*"] = f"{where}: EnvironmentFile={a.value} uses a specifier"
                elif PurePosixPath(a.value.removeprefix("-")).is_absolute():
                    env_files.append(a.value)
            elif a.key == "UnsetEnvironment":
                if not a.value:
                    unset.clear()
                    continue
                words, error = split_words(a.value)
                if error:
                    se.uncertain["*"] = f"{where}: UnsetEnvironment= {error}: systemd ignores the rest of the line"
                unset += words
            elif a.key == "ExecStart":
                if not a.value:
                    se.exec_start.clear()
                else:
                    se.exec_start.append(a.value)
    from_files: dict[str, str] = {}
    se.env_files = env_files
    for spec in env_files:
        optional = spec.startswith("-")
        pattern = spec.removeprefix("-")
        paths = glob(pattern) if glob and any(ch in pattern for ch in "*?[") else [pattern]
        if not paths and not optional:
            se.missing_files.append(pattern)
        for p in paths:
            try:
                text = read(p)
            except OSError:
                if not optional:
                    se.missing_files.append(p)
                continue
            values, notes = parse_env_file(text)
            for note in notes:
                se.uncertain.setdefault("*", f"EnvironmentFile {p}: {note}")
            from_files.update(values)
    env = {k: v for k, v in env_list.items()}
    env.update(from_files)  # EnvironmentFile= overrides Environment= (systemd.exec(5))
    for u in unset:
        name, eq, val = u.partition("=")
        if name in env and (not eq or env[name] == val):
            del env[name]
    se.environment = env
    return se


def _assignments(value: str, where: str, se: ServiceEnvironment):
    words, error = split_words(value)
    if error:
        # systemd keeps what came before the bad spot; the line's intent is unknowable.
        se.uncertain["*"] = f"{where}: Environment= {error}: systemd ignores the rest of the line"
    for w in words:
        try:
            resolved, host_dependent = resolve_specifiers(w)
        except SyntaxProblem as err:
            name = w.partition("=")[0]
            se.uncertain[name if _NAME.fullmatch(name) else "*"] = f"{where}: {err}: systemd ignores {w!r}"
            continue
        name, eq, _ = resolved.partition("=")
        if not eq or not _NAME.fullmatch(name):
            continue  # "Invalid environment assignment, ignoring"
        if host_dependent:
            se.uncertain[name] = f"{where}: {name} uses a specifier whose value depends on the host"
        yield name, resolved.partition("=")[2]
