"""Small file helpers: atomic writes and strict JSONL reading.

Every artefact srmir writes (datasets, metrics, reports, checkpoints' metadata) goes through
:func:`atomic_path` so that an interrupted run never leaves a half-written file under the final
name: data is written to a temporary sibling and renamed only when complete.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError
from .scrub import scrub


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary name, then rename), secrets masked."""
    with atomic_path(path) as tmp:
        tmp.write_text(scrub(text), encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, records) -> None:
    """Write an iterable of dicts as JSON Lines to ``path`` atomically, secrets masked."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(scrub(json.dumps(rec, ensure_ascii=False)) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON Lines file of objects; any bad line raises UserError naming ``file:line``.

    Blank lines are skipped. An empty file is an error (there is nothing to use).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError("no such file", where=str(path))
    records = []
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read: {e.strerror}", where=str(path)) from None
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError("not valid UTF-8", where=f"{path}:{lineno}") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"invalid JSON: {e.msg}", where=f"{path}:{lineno}") from None
        if not isinstance(obj, dict):
            raise UserError("expected a JSON object", where=f"{path}:{lineno}")
        records.append(obj)
    if not records:
        raise UserError("file is empty", where=str(path))
    return records


def os_failure(exc: BaseException, path: str | os.PathLike) -> OSError:
    """The operating-system reason behind a failed write to ``path``, as an OSError naming the path.

    torch.save and safetensors report a full disk as a RuntimeError ("unexpected pos ...",
    "file write failed", "IoError(... code: 28 ...)") without an errno; the file system is asked
    instead: almost no space left means ENOSPC, a read-only mount EROFS."""
    import errno as errno_codes

    if isinstance(exc, OSError) and exc.errno is not None:
        return OSError(exc.errno, exc.strerror or str(exc), exc.filename or str(path))
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        stats = os.statvfs(probe)
        free = stats.f_bavail * stats.f_frsize
        read_only = bool(stats.f_flag & os.ST_RDONLY)
    except OSError:
        free, read_only = None, False
    message = str(exc)
    if read_only:
        code = errno_codes.EROFS
    elif (free is not None and free < 16 << 20) or "os error 28" in message or "No space left" in message:
        code = errno_codes.ENOSPC
    else:
        first = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
        return OSError(errno_codes.EIO, f"write failed: {first}", str(path))
    return OSError(code, os.strerror(code), str(path))
