"""Corpus readers: formats, resumable document indices, held-out split, errors naming files."""

import json

import pytest

from circuit_atlas.errors import CircuitAtlasError
from circuit_atlas.io.corpus import CorpusError, open_corpus


def test_folder_of_txt_files_is_read_recursively_in_path_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "notes.md").write_text("ignored")
    corpus = open_corpus(tmp_path)
    assert list(corpus) == ["first", "second"]
    assert list(corpus.documents(start=1)) == ["second"]


def test_jsonl_with_text_field_and_resume_index(tmp_path):
    path = tmp_path / "c.jsonl"
    rows = [{"text": f"doc {i}", "id": i} for i in range(5)] + [{"text": ""}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    corpus = open_corpus(path)
    assert list(corpus) == [f"doc {i}" for i in range(5)]
    assert list(corpus.documents(3)) == ["doc 3", "doc 4"]
    other = tmp_path / "d.jsonl"
    other.write_text(json.dumps({"body": "x"}) + "\n")
    assert list(open_corpus(other, text_field="body")) == ["x"]


def test_txt_file_paragraphs(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("one\nline two\n\n\nthree\n")
    assert list(open_corpus(path)) == ["one\nline two", "three"]


def test_split_is_disjoint_and_complete():
    corpus = open_corpus([f"d{i}" for i in range(10)])
    train, held = corpus.split(every=4)
    assert list(held) == ["d3", "d7"]
    assert sorted(list(train) + list(held)) == sorted(corpus)


@pytest.mark.parametrize("content,match", [
    ('{"text": "ok"}\n{not json}\n', "line 2: not valid JSON"),
    ('{"text": "ok"}\n{"body": "x"}\n', "line 2: no 'text' field"),
    ('{"text": 3}\n', "line 1: field 'text' is int"),
])
def test_bad_jsonl_names_file_and_line(tmp_path, content, match):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(CorpusError, match=match) as info:
        list(open_corpus(path))
    assert str(path) in str(info.value)


def test_missing_and_unsupported_paths(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        open_corpus(tmp_path / "nope.jsonl")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(CorpusError, match="unsupported file type '.csv'"):
        open_corpus(tmp_path / "x.csv")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(CorpusError, match="no .txt files"):
        open_corpus(empty)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(CorpusError, match="not UTF-8"):
        list(open_corpus(tmp_path / "latin1.txt"))
    assert issubclass(CorpusError, CircuitAtlasError)


def test_bad_bytes_are_reported_on_their_exact_line(tmp_path):
    """Far past the first read-ahead block, the message still names the right line and byte."""
    lines = [f'{{"text": "document {i}"}}\n'.encode() for i in range(5000)]
    lines.append('{"text": "caf\xe9"}\n'.encode("latin-1"))
    (tmp_path / "docs.jsonl").write_bytes(b"".join(lines))
    with pytest.raises(CorpusError, match=r"docs.jsonl, line 5001: not UTF-8 .* byte 14 of the line"):
        for _ in open_corpus(tmp_path / "docs.jsonl"):
            pass
    # Lines ended by a lone "\r" count too, as a text-mode reader counts them.
    (tmp_path / "mac.jsonl").write_bytes(b'{"text": "a"}\r{"text": "b"}\r{"text": "caf\xe9"}\r')
    with pytest.raises(CorpusError, match=r"mac.jsonl, line 3: not UTF-8 .* byte 14 of the line"):
        list(open_corpus(tmp_path / "mac.jsonl"))


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
def test_text_files_read_the_same_with_any_line_ending(tmp_path, ending):
    """Paragraphs of a .txt corpus do not depend on the file's line endings (no stray "\r")."""
    text = ending.join([b"first line", b"second line", b"", b"next paragraph", b""])
    (tmp_path / "doc.txt").write_bytes(text)
    assert list(open_corpus(tmp_path / "doc.txt")) == ["first line\nsecond line", "next paragraph"]
