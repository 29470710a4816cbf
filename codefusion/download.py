"""Fetch the CodeFusion benchmark files from the public microsoft/prose-benchmarks repository.

Files land in the same layout as ``../shared/data/prose-codefusion`` (lower-case folders), so
the result works as ``--data`` / ``CODEFUSION_DATA``. Each file is written atomically (temporary
file, then rename) and JSON files are checked to parse before they are kept.
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from codefusion.errors import UserError

COMMIT = "2d1eeeae2f4248082cee1460676f83d97e493c13"
BASE_URL = f"https://raw.githubusercontent.com/microsoft/prose-benchmarks/{COMMIT}/CodeFusion"
# (path in the repository, path here)
FILES = [
    ("Benchmarks/BashBenchmarks.json", "benchmarks/BashBenchmarks.json"),
    ("Benchmarks/CFRuleBenchmarks.json", "benchmarks/CFRuleBenchmarks.json"),
    ("Benchmarks/PythonBenchmarks.json", "benchmarks/PythonBenchmarks.json"),
    ("Pretraining Data/BashSnippets.txt", "pretraining/BashSnippets.txt"),
    (
        "Pretraining Data/ConditionalFormattingSnippets.txt",
        "pretraining/ConditionalFormattingSnippets.txt",
    ),
]


class DownloadError(UserError):
    """A file could not be fetched or is not what it should be."""


def download(
    dest: Path, base_url: str | None = None, force: bool = False, timeout: float = 60.0
) -> Path:
    """Download every benchmark file into ``dest``; existing files are kept unless ``force``."""
    base = (base_url or BASE_URL).rstrip("/")
    dest.mkdir(parents=True, exist_ok=True)
    for remote, local in tqdm(FILES, desc="download", unit="file"):
        target = dest / local
        if target.is_file() and not force:
            continue
        url = f"{base}/{urllib.request.quote(remote)}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                body = r.read()
        except (urllib.error.URLError, OSError) as e:
            raise DownloadError(f"cannot fetch {url}: {getattr(e, 'reason', e)}") from None
        if local.endswith(".json"):
            try:
                json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise DownloadError(f"{url} did not return valid JSON") from None
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        os.replace(tmp, target)
    return dest
