"""Fetch and unpack a registry dataset's archive into the data folder.

Both steps are atomic: the archive is written to a temp file and renamed only once verified,
and it is unpacked into a temp folder that is renamed into place only once complete, so a
killed run never leaves something that looks like a finished corpus. Archive members that
could write outside the target folder (absolute paths, "..", links, devices) are refused.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse
from urllib.request import urlopen

from tqdm import tqdm

from pipeline.errors import DataError

DEFAULT_BASE = "https://s3.amazonaws.com/fast-ai-nlp"
MIRRORED_BASES = (DEFAULT_BASE, "https://s3.amazonaws.com/fast-ai-modelzoo")  # datasets; published models
CHUNK = 1 << 20
TIMEOUT_S = 60


def archive_url(url: str) -> str:
    """The registry URL, with fast.ai's bucket (datasets or model zoo) replaced by $ULMFIT_MIRROR when
    set: a mirror holds both buckets' archives side by side (their names do not collide)."""
    mirror = os.environ.get("ULMFIT_MIRROR")
    for base in MIRRORED_BASES if mirror else ():
        if url.startswith(base):
            return mirror.rstrip("/") + url[len(base):]
    return url


def download_dataset(name: str, entry: dict, data_dir: Path) -> Path:
    """Download (unless a verified archive is already there) and unpack into data_dir/name."""
    url = archive_url(entry["url"])
    created = [folder for folder in [data_dir, *data_dir.parents] if not folder.exists()]
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _download_into(name, entry, data_dir, url)
    except BaseException:
        for folder in created:  # innermost first: a failed download leaves no folder it made
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty
        raise


def _download_into(name: str, entry: dict, data_dir: Path, url: str) -> Path:
    archive = data_dir / PurePosixPath(urlparse(url).path).name
    # An archive at this path is complete: it only ever appears by rename after verification.
    downloaded = not archive.exists()
    if downloaded:
        fetch(url, archive, entry.get("sha256"))
    try:
        unpack(archive, data_dir / name)
    except DataError:
        if downloaded:  # a bad archive is useless; keep only files the user put there
            archive.unlink(missing_ok=True)
        raise
    if downloaded:  # the unpacked folder is the corpus now; the archive would only use disk
        archive.unlink(missing_ok=True)
    return data_dir / name


def fetch(url: str, dest: Path, sha256: str | None = None) -> None:
    """Stream url to dest with a progress bar; verify sha256 (else Content-Length), then rename."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        with urlopen(url, timeout=TIMEOUT_S) as resp:
            length = resp.headers.get("Content-Length")
            expected = int(length) if length else None
            digest, size = _stream(resp, tmp, expected, dest.name)
        if sha256 and digest != sha256.lower():
            raise DataError(f"download of {url} is corrupt: sha256 {digest}, expected {sha256}")
        if not sha256 and expected is not None and size != expected:
            raise DataError(f"download of {url} is incomplete: got {size} bytes, "
                            f"Content-Length said {expected}")
        os.replace(tmp, dest)
    except (OSError, http.client.HTTPException, ValueError) as e:  # URLError is an OSError
        raise DataError(f"download of {url} failed: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)


def _stream(resp, tmp: Path, expected: int | None, label: str) -> tuple[str, int]:
    sha, size = hashlib.sha256(), 0
    with open(tmp, "wb") as out, tqdm(total=expected, unit="B", unit_scale=True,
                                      unit_divisor=1024, desc=f"download {label}", file=sys.stderr) as bar:
        while chunk := resp.read(CHUNK):
            out.write(chunk)
            sha.update(chunk)
            size += len(chunk)
            bar.update(len(chunk))
    return sha.hexdigest(), size


def unpack(archive: Path, target: Path) -> None:
    """Unpack archive's `target.name/` folder (or its whole content) into target, atomically."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.unpacking-", dir=target.parent))
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(archive, member)
            # The checks above are the guard; the "data" filter (Python >= 3.11.4) is a second one.
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp, members=members, **safe)
        root = tmp / target.name if (tmp / target.name).is_dir() else tmp
        _move_into_place(root, target)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{archive}: cannot unpack: {e}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    name = member.name
    if member.issym() or member.islnk():
        raise DataError(f"{archive}: refusing link member {name!r} -> {member.linkname!r}")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"{archive}: refusing special member {name!r} (device, fifo, ...)")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise DataError(f"{archive}: refusing member {name!r}, it would escape the target folder")


def _move_into_place(root: Path, target: Path) -> None:
    if not target.exists():
        os.replace(root, target)
        return
    # Part of the corpus is already there (e.g. our parquet copies): add only what is missing,
    # each entry by one rename, so nothing that exists is overwritten or left half-written.
    for child in sorted(root.iterdir()):
        if not (target / child.name).exists():
            os.replace(child, target / child.name)
