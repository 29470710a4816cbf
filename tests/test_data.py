"""Data loading: row policy per split, clear errors, the Python corpus, the downloader."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from pathlib import Path

import pytest

from codefusion.data import DataError, load_benchmark, load_snippets, resolve_data_dir
from codefusion.download import FILES, DownloadError, download
from codefusion.pycorpus import build_python_corpus


def test_train_split_skips_null_prompt_and_garbled_rows(fixture_data):
    examples, report = load_benchmark("cf", "train", fixture_data)
    assert all(e.prompt for e in examples)
    assert report.skipped["null or empty prompt"] == 1
    assert report.kept == len(examples) == 32


def test_test_split_keeps_every_row(fixture_data):
    examples, report = load_benchmark("cf", "test", fixture_data)
    assert len(examples) == 9 and not report.skipped
    assert examples[-1].prompt == "" and examples[-1].code == "LessThan(3)"
    assert examples[0].data[0] == ["Index", "Value"]


def test_unparseable_cf_rule_is_skipped_in_train(tmp_path):
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    rows = [
        {"ID": 1, "NL Utterance": "x", "Code": "if (a) { b }"},
        {"ID": 2, "NL Utterance": "y", "Code": "Blanks()"},
    ]
    (bench / "CFRuleBenchmarks.json").write_text(json.dumps({"train": rows, "test": rows}))
    examples, report = load_benchmark("cf", "train", tmp_path)
    assert [e.id for e in examples] == [2] and report.skipped["unparseable cf gold"] == 1


def test_wrong_types_and_missing_keys_are_rows_to_skip(tmp_path):
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    rows = [
        {"ID": 1},
        {"NL Utterance": 3, "Code": ["x"]},
        "not a row",
        {"NL Utterance": "a", "Code": "ls\x00 -l"},
    ]
    (bench / "BashBenchmarks.json").write_text(json.dumps({"train": rows, "test": []}))
    examples, report = load_benchmark("bash", "train", tmp_path)
    assert [e.code for e in examples] == ["ls -l"]  # NUL dropped
    assert sum(report.skipped.values()) == 3


def test_malformed_json_names_the_file(tmp_path):
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    (bench / "PythonBenchmarks.json").write_text('{"train": [')
    with pytest.raises(DataError, match=r"PythonBenchmarks\.json: malformed JSON at line 1"):
        load_benchmark("python", "train", tmp_path)


def test_missing_file_and_folder_are_clear_errors(tmp_path, monkeypatch):
    (tmp_path / "benchmarks").mkdir()
    with pytest.raises(DataError, match="BashBenchmarks.json: file not found"):
        load_benchmark("bash", "test", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        resolve_data_dir(tmp_path / "nope")
    monkeypatch.delenv("CODEFUSION_DATA", raising=False)
    monkeypatch.setattr("codefusion.data.DOWNLOAD_CACHE", tmp_path / "no-cache")
    with pytest.raises(DataError, match="CODEFUSION_DATA, or run `codefusion download`"):
        resolve_data_dir(None, "bash")
    with pytest.raises(DataError, match="unknown benchmark"):
        load_benchmark("java", "test", tmp_path)


def test_without_a_data_folder_the_built_in_cf_files_are_used(tmp_path, monkeypatch, caplog):
    """The tiny default trains on a fresh machine: the CF benchmark and snippets ship with the
    package (xz, CC BY-SA 4.0), unpacked once into a cache folder, said in one log line."""
    monkeypatch.delenv("CODEFUSION_DATA", raising=False)
    monkeypatch.setattr("codefusion.data.DOWNLOAD_CACHE", tmp_path / "no-cache")
    monkeypatch.setattr("pathlib.Path.home", lambda: tmp_path)
    train, report = load_benchmark("cf", "train")
    test, _ = load_benchmark("cf", "test")
    assert (len(train), report.skipped["unparseable cf gold"], len(test)) == (709, 3, 178)
    assert len(load_snippets("cf")) == 226_468
    assert (tmp_path / ".cache" / "codefusion").is_dir()
    assert "built into the package" in caplog.text
    notice = (Path(__file__).parents[1] / "codefusion" / "builtin_data" / "NOTICE.md").read_text()
    assert "2d1eeeae2f4248082cee1460676f83d97e493c13" in notice
    assert "Attribution-ShareAlike 4.0" in notice


def test_wrong_top_level_shape(tmp_path):
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    (bench / "CFRuleBenchmarks.json").write_text("[1, 2]")
    with pytest.raises(DataError, match='expected an object with a "test" list'):
        load_benchmark("cf", "test", tmp_path)


def test_snippets_from_environment(fixture_data, monkeypatch):
    monkeypatch.setenv("CODEFUSION_DATA", str(fixture_data))
    assert load_snippets("bash")[:2] == ["ls -la", "find . -name '*.py'"]


def test_python_corpus_from_a_source_tree(tmp_path):
    (tmp_path / "a.py").write_text(
        '"""doc"""\nimport os\nx = 1\nif x:\n    y = f(x)\nz = (1 +\n     2)\nx = 1\n'
    )
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "t.py").write_text("skipped = 1\n")
    (tmp_path / "broken.py").write_text("def (:\n")
    assert build_python_corpus(tmp_path) == ["import os", "x = 1", "y = f(x)"]


def test_python_corpus_of_this_interpreter_is_large_and_deterministic():
    a = build_python_corpus()
    assert len(a) > 10_000 and len(set(a)) == len(a) and max(map(len, a)) <= 200
    assert a[:50] == build_python_corpus()[:50]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture()
def mirror(tmp_path):
    """A local file server holding the repository's layout (loopback only)."""
    root = tmp_path / "mirror"
    for remote, _ in FILES:
        p = root / remote
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text('{"train": [], "test": []}' if remote.endswith(".json") else "ls\n")
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()


def test_download_from_a_mirror(mirror, tmp_path):
    url, _ = mirror
    dest = download(tmp_path / "data", base_url=url)
    assert (dest / "benchmarks" / "CFRuleBenchmarks.json").is_file()
    assert (dest / "pretraining" / "BashSnippets.txt").read_text() == "ls\n"
    assert load_benchmark("cf", "test", dest)[0] == []


def test_download_rejects_non_json_and_missing_files(mirror, tmp_path):
    url, root = mirror
    (root / "Benchmarks" / "CFRuleBenchmarks.json").write_text("<html>")
    with pytest.raises(DownloadError, match="did not return valid JSON"):
        download(tmp_path / "d1", base_url=url)
    assert not (tmp_path / "d1" / "benchmarks" / "CFRuleBenchmarks.json").exists()
    (root / "Benchmarks" / "CFRuleBenchmarks.json").unlink()
    with pytest.raises(DownloadError, match="cannot fetch"):
        download(tmp_path / "d2", base_url=url)


def test_real_data_counts(real_data_dir: Path):
    py_train, rep = load_benchmark("python", "train", real_data_dir)
    assert rep.skipped["null or empty prompt"] == 79 and len(py_train) == 2379 - 79
    assert len(load_benchmark("python", "test", real_data_dir)[0]) == 500
    assert len(load_benchmark("cf", "test", real_data_dir)[0]) == 178
    assert len(load_benchmark("bash", "test", real_data_dir)[0]) == 2522
