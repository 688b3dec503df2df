"""Atomic writes, JSON lines and the disk saying no: torn last lines only are skipped, a full or
read-only disk is one clear error with the old file intact, writes reach the disk (fsync)."""
import json
import multiprocessing
import os

import numpy as np
import pytest

from tasks.common.errors import UserError
from tasks.common.io import (WriteError, append_jsonl, atomic_path, atomic_write_text, make_folder, read_jsonl,
                             try_lock, update_npz)
from tests.disk import read_only_disk, small_disk


def test_read_jsonl_skips_a_torn_last_line_only(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    path.write_text('{"step": 1}\n{"step": 2}')  # whole, only its line end missing
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]


@pytest.mark.parametrize("text, line", [('{"step": 1}\n{"st\n{"step": 3}\n', 2),
                                        ('{"step": 1}\n\n{"step": 3}\n', 2),
                                        ('{"step": 1}\n[1, 2]\n', 2),
                                        ('{"step": 1}\nNaN\n{"step": 2}', 2)])
def test_read_jsonl_names_the_file_and_line_of_any_other_bad_line(tmp_path, text, line):
    path = tmp_path / "log.jsonl"
    path.write_text(text)
    with pytest.raises(UserError, match=f"{path}:{line} is not a JSON object"):
        read_jsonl(path)


def test_append_jsonl_cuts_a_torn_last_line_and_writes_standard_json(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "lo')
    append_jsonl(path, [{"step": 2, "loss": float("nan"), "sigma": float("inf"), "lr": 0.5}])
    lines = path.read_text().splitlines()
    assert lines[0] == '{"step": 1}'
    assert json.loads(lines[1]) == {"step": 2, "loss": None, "sigma": None, "lr": 0.5,
                                    "null_reason": {"loss": "not finite (nan)", "sigma": "not finite (inf)"}}
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    path.write_text('{"step": 1}')  # a whole last line without its line end is kept
    append_jsonl(path, [{"step": 2}])
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]


def test_atomic_path_flushes_the_file_and_its_folder_before_and_after_the_rename(tmp_path, monkeypatch):
    synced, real_fsync = [], os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write_text(tmp_path / "a.txt", "hello")
    assert len(synced) == 2 and synced[0].startswith(str(tmp_path / ".a.txt.")) and synced[1] == str(tmp_path)
    assert (tmp_path / "a.txt").read_text() == "hello"


def test_a_full_disk_is_one_clear_error_and_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    folder = tmp_path / "disk"
    with small_disk(folder, 64, monkeypatch):
        atomic_write_text(folder / "state", "old")
        with pytest.raises(WriteError, match=f"cannot write {folder / 'state'}: No space left on device"):
            atomic_write_text(folder / "state", "x" * 200_000)
        assert (folder / "state").read_text() == "old"
        assert sorted(p.name for p in folder.iterdir()) == ["state"]
        append_jsonl(folder / "log.jsonl", [{"step": 1}])
        with pytest.raises(WriteError, match="No space left on device"):
            append_jsonl(folder / "log.jsonl", [{"step": 2, "text": "x" * 200_000}])
        assert read_jsonl(folder / "log.jsonl") == [{"step": 1}]  # cut back to its whole lines
        (folder / "state").unlink()


def test_a_read_only_disk_or_a_file_in_the_way_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(WriteError, match="a file of that name is in the way"):
        make_folder(tmp_path / "file")
    with pytest.raises(WriteError, match="cannot create the folder .*: Not a directory"):
        make_folder(tmp_path / "file" / "run")
    with read_only_disk(tmp_path / "ro") as mounted:
        if not mounted:
            pytest.skip("this process may not mount a read-only tmpfs")
        with pytest.raises(WriteError, match="Read-only file system"):
            atomic_write_text(tmp_path / "ro" / "a.txt", "x")
        with pytest.raises(WriteError, match="Read-only file system"):
            make_folder(tmp_path / "ro" / "run")
        with pytest.raises(WriteError, match="Read-only file system"):
            append_jsonl(tmp_path / "ro" / "log.jsonl", [{"step": 1}])
        with pytest.raises(WriteError, match="Read-only file system"):
            try_lock(tmp_path / "ro" / ".lock", shared=True)


def test_atomic_path_keeps_other_errors_as_they_are(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with atomic_path(tmp_path / "a"):
            1 / 0
    assert list(tmp_path.iterdir()) == []


def _append_lines(path, writer, count, start):
    start.wait()
    for i in range(count):
        append_jsonl(path, [{"writer": writer, "i": i, "pad": "x" * (i % 50)}])


def _add_keys(path, writer, count, start):
    start.wait()
    for i in range(count):
        update_npz(path, lambda old: {**old, f"{writer}/{i}": np.full(3, i)})


def _together(target, path, count):
    """``target(path, writer, count, start)`` in two processes released at once."""
    context = multiprocessing.get_context("fork")
    start = context.Event()
    workers = [context.Process(target=target, args=(path, writer, count, start)) for writer in "ab"]
    for w in workers:
        w.start()
    start.set()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0


def test_two_processes_appending_at_once_keep_every_line_whole(tmp_path):
    path = tmp_path / "results.jsonl"
    _together(_append_lines, path, 400)
    lines = [json.loads(line) for line in path.read_text().splitlines()]  # each line whole JSON
    assert sorted((r["writer"], r["i"]) for r in lines) == [(w, i) for w in "ab" for i in range(400)]


def test_two_processes_updating_one_npz_at_once_lose_no_change(tmp_path):
    path = tmp_path / "episodes.npz"
    _together(_add_keys, path, 60)
    with np.load(path) as saved:
        assert sorted(saved.files) == sorted(f"{w}/{i}" for w in "ab" for i in range(60))


def test_no_write_or_lock_goes_through_a_symbolic_link(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "theirs.jsonl"
    target.write_text('{"keep": 1}\n{"unterminated": 2}')
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "results.jsonl").symlink_to(target)
    (folder / ".lock").symlink_to(outside / "made.lock")
    (folder / "episodes.npz").symlink_to(outside / "theirs.npz")
    with pytest.raises(UserError, match="results.jsonl is a symbolic link"):
        append_jsonl(folder / "results.jsonl", [{"a": 1}])
    with pytest.raises(UserError, match=r"\.lock is a symbolic link"):
        try_lock(folder / ".lock")
    with pytest.raises(UserError, match="episodes.npz is a symbolic link"):
        update_npz(folder / "episodes.npz", lambda old: {"a": np.zeros(1)})
    assert target.read_text() == '{"keep": 1}\n{"unterminated": 2}'
    assert sorted(p.name for p in outside.iterdir()) == ["theirs.jsonl"]


def test_text_that_is_not_utf8_is_one_clear_error(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": "\xff\xfe"}\n')
    with pytest.raises(UserError, match=r"results.jsonl is not UTF-8 text \(byte 16"):
        read_jsonl(path)
