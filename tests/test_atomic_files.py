"""Atomic writes keep readable permissions and leave no temporary files behind."""
import os
import stat

import pytest

from rasa_gpt3.atomic_files import write_atomic


def test_new_file_is_world_readable_and_complete(tmp_path):
    target = write_atomic(tmp_path / "sub" / "a.json", "{}")
    assert target.read_text() == "{}"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert os.listdir(target.parent) == ["a.json"]


def test_replacing_keeps_the_existing_mode(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    target.chmod(0o600)
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(TypeError):
        write_atomic(target, 123)  # not str or bytes
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]
