"""toolkit.files.write_atomic: the one writer behind reports, locks, bench files and run artifacts."""

from __future__ import annotations

import os
import stat

import pytest

from toolkit import files


def test_write_replaces_whole_files_with_the_mode_asked_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out" / "bench.json"
    files.write_atomic(target, "{}\n")
    files.write_atomic(target, '{"a": 1}\n', 0o600, fsync=True)
    assert target.read_text() == '{"a": 1}\n'
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["bench.json"]


def test_a_failed_write_keeps_the_previous_file_and_removes_its_temporary(tmp_path):
    target = tmp_path / "report.json"
    files.write_atomic(target, "old\n")
    with pytest.raises(UnicodeEncodeError):
        files.write_atomic(target, "half \udcff written\n")  # a lone surrogate: utf-8 refuses it
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    # The audit writes names from packets: with backslashreplace the same text is written, escaped.
    files.write_atomic(target, "name \udcff\n", errors="backslashreplace")
    assert target.read_text() == "name \\udcff\n"


def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    target = tmp_path / "summary.json"
    os.symlink(victim, target)
    files.write_atomic(target, "{}\n", 0o600)
    assert victim.read_text() == "keep\n"
    assert not target.is_symlink() and target.read_text() == "{}\n"
