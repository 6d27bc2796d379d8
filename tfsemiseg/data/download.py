"""Fetching an MSD task archive by URL, verifying its checksum, extracting it atomically."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from tfsemiseg.config import DownloadSource
from tfsemiseg.errors import TfSemisegError
from tfsemiseg.io_utils import ensure_writable_dir


def file_checksum(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_task(
    task: str,
    source: DownloadSource,
    dest_root: Path,
    progress: Optional[Callable[[int, int], None]] = None,
) -> Path:
    """Download `source.url`, check it, and extract it to `dest_root/task`.

    The archive is downloaded and extracted inside a temporary folder in `dest_root`;
    only a verified, fully extracted task folder is renamed into place, so a network
    failure or a bad checksum leaves nothing behind.
    """
    dest_root = ensure_writable_dir(Path(dest_root))
    final = dest_root / task
    if final.exists():
        raise TfSemisegError(f"{final}: already exists; remove it to download again")
    algo, _, expected = source.checksum.partition(":")
    work = Path(tempfile.mkdtemp(prefix=f".{task}.", suffix=".download", dir=dest_root))
    try:
        archive = work / "archive"
        try:
            with urllib.request.urlopen(source.url, timeout=60) as resp, open(archive, "wb") as out:
                total = int(resp.headers.get("Content-Length") or 0)
                done = 0
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    out.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TfSemisegError(f"{source.url}: download failed ({reason})") from None
        if expected:
            actual = file_checksum(archive, algo)
            if actual != expected.lower():
                raise TfSemisegError(f"{source.url}: checksum mismatch ({algo} {actual}, expected {expected})")
        extract = work / "extract"
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(extract, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise TfSemisegError(f"{source.url}: cannot extract archive ({exc})") from None
        top = extract / task if (extract / task).is_dir() else extract
        if not (top / "dataset.json").is_file():
            raise TfSemisegError(f"{source.url}: archive has no {task}/dataset.json")
        top.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final
