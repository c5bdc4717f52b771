"""Atomic writes of files and whole directories keep readable permissions and leave no temporary files behind."""

import os
import stat
import subprocess
import sys
import textwrap

import pytest

from rasa_gpt3.atomic_files import remove_abandoned_siblings, rename_aside_and_in, replacing_directory, write_atomic


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


# ---------------------------------------------------------------- replacing a whole directory


def _tree(directory):
    return {p.name: p.read_text() for p in sorted(directory.iterdir())}


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_new_directory_appears_whole_and_readable(tmp_path):
    target = tmp_path / "out" / "intent"
    with replacing_directory(target) as staging:
        assert staging.parent == target.parent and not target.exists()
        (staging / "a.txt").write_text("a")
    assert _tree(target) == {"a.txt": "a"}
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert os.listdir(target.parent) == ["intent"]


def test_replacing_swaps_the_whole_directory_and_keeps_its_mode(tmp_path):
    target = tmp_path / "intent"
    target.mkdir()
    (target / "old.txt").write_text("old")
    (target / "both.txt").write_text("old")
    target.chmod(0o750)
    with replacing_directory(target) as staging:
        (staging / "both.txt").write_text("new")
        assert _tree(target) == {"both.txt": "old", "old.txt": "old"}  # readers see the old one meanwhile
    assert _tree(target) == {"both.txt": "new"}
    assert stat.S_IMODE(target.stat().st_mode) == 0o750
    assert os.listdir(tmp_path) == ["intent"]


def test_a_failed_fill_keeps_the_old_directory_and_leaves_nothing(tmp_path):
    target = tmp_path / "intent"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with replacing_directory(target) as staging:
            (staging / "half.txt").write_text("half")
            raise RuntimeError("the writer failed")
    assert _tree(target) == {"old.txt": "old"}
    assert os.listdir(tmp_path) == ["intent"]


def test_a_file_in_the_way_is_refused_and_kept(tmp_path):
    target = tmp_path / "intent"
    target.write_text("not a directory")
    with pytest.raises(NotADirectoryError):
        with replacing_directory(target):
            pass
    assert target.read_text() == "not a directory" and os.listdir(tmp_path) == ["intent"]


def test_the_two_rename_fallback_replaces_and_removes_the_old(tmp_path):
    target, staging = tmp_path / "intent", tmp_path / "staging"
    target.mkdir()
    (target / "old.txt").write_text("old")
    staging.mkdir()
    (staging / "new.txt").write_text("new")
    rename_aside_and_in(staging, target)
    assert _tree(target) == {"new.txt": "new"} and os.listdir(tmp_path) == ["intent"]


def test_siblings_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    target = tmp_path / "intent"
    target.mkdir()
    dead = tmp_path / f".intent.{_dead_pid()}.abc.new"
    live = tmp_path / f".intent.{os.getppid()}.def.new"
    for sibling in (dead, live):
        sibling.mkdir()
        (sibling / "train.jsonl").write_text("half")
    with replacing_directory(target) as staging:
        (staging / "x").write_text("x")
    assert sorted(os.listdir(tmp_path)) == sorted(["intent", live.name])


def test_siblings_of_a_directory_with_a_longer_name_are_not_its_own(tmp_path):
    """`.intent.5.<pid>.x.new` belongs to `intent.5`, not to `intent` with a writer whose id is 5."""
    other = tmp_path / f".intent.5.{_dead_pid()}.abc.new"
    other.mkdir()
    remove_abandoned_siblings(tmp_path / "intent")
    assert other.exists()
    remove_abandoned_siblings(tmp_path / "intent.5")
    assert not other.exists()


def test_a_missing_directory_comes_back_from_the_set_aside_copy(tmp_path):
    """A writer killed between its two renames left the old directory aside and none in place."""
    pid = _dead_pid()
    aside = tmp_path / f".intent.{pid}.abc.old"
    aside.mkdir()
    (aside / "manifest.json").write_text("old")
    (tmp_path / f".intent.{pid}.def.old").mkdir()  # made for a later set-aside that never happened
    half = tmp_path / f".intent.{pid}.ghi.new"
    half.mkdir()
    (half / "train.jsonl").write_text("new")
    remove_abandoned_siblings(tmp_path / "intent")
    assert os.listdir(tmp_path) == ["intent"] and _tree(tmp_path / "intent") == {"manifest.json": "old"}


_SIGNALLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from rasa_gpt3.atomic_files import replacing_directory

    target, when = Path(sys.argv[1]), sys.argv[2]

    def signal_at_the_swap(event, args):
        # the swap looks up renameat2 (ctypes) or renames the old directory aside: SIGTERM arrives right then
        if when == "swap" and (event == "os.rename" or event == "ctypes.dlsym" and "renameat2" in args):
            os.kill(os.getpid(), signal.SIGTERM)

    sys.addaudithook(signal_at_the_swap)
    with replacing_directory(target) as staging:
        (staging / "new.txt").write_text("new")
        if when == "fill":
            os.kill(os.getpid(), signal.SIGTERM)
            (staging / "late.txt").write_text("never written")
    print("finished")
""")


@pytest.mark.parametrize("when", ["fill", "swap"])
def test_sigterm_leaves_the_old_or_the_new_directory_and_no_temporary(tmp_path, when):
    target = tmp_path / "intent"
    target.mkdir()
    (target / "old.txt").write_text("old")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo)
    done = subprocess.run(
        [sys.executable, "-c", _SIGNALLED_WRITER, str(target), when],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == -15, done.stderr  # it still ends as SIGTERM ends a process
    assert "finished" not in done.stdout
    expected = {"old.txt": "old"} if when == "fill" else {"new.txt": "new"}
    assert _tree(target) == expected
    assert os.listdir(tmp_path) == ["intent"]
