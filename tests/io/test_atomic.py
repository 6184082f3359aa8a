"""atomic_write_json / atomic_write_text: the old file or the new one, never a torn one, and the
mode any new file gets (files such as transcoder configs are shared and installed)."""

import json
import os

import pytest

from circuit_atlas.io import atomic
from circuit_atlas.io.atomic import atomic_write_json, atomic_write_text


def test_written_files_get_a_new_files_mode(tmp_path):
    umask = os.umask(0o022)
    os.umask(umask)
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_write_text(tmp_path / "b.jsonl", "{}\n")
    for name in ("a.json", "b.jsonl"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    atomic_write_json(path, {"old": True})

    def crash(*args, **kwargs):
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(atomic, "_dump", crash)
    with pytest.raises(RuntimeError):
        atomic_write_json(path, {"new": True})
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
