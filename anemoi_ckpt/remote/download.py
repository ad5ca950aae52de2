"""Downloading a checkpoint: resumable, verified, and put in place atomically.

The bytes go to ``.<name>.part`` beside the target, in order, so a partial file is always a
prefix of the source; ``.<name>.part.json`` records what is being fetched (the source, its size
and, when known, the uuid and content id). Neither is opened through a link: the partial file is
created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` and reopened for a resume with ``O_NOFOLLOW``; a
symbolic link, FIFO, hard-linked or foreign-owned file at either name is refused with one line;
the record is written to a fresh temporary file renamed into place, read back at most 64 KiB,
and trusted only when it is exactly this transfer's record. A second run with the same source and size resumes
from the end of the partial file. When every byte is there, the file is opened and verified
(every section digest and the content id recomputed, the uuid and content id compared with what
was expected) *before* it is renamed to its name: a damaged or substituted download never appears
under the target name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import BinaryIO

from ..errors import AncError, FormatError, IntegrityError, UsageError
from ..progress import Progress
from ..container.rangefile import CHUNK, RangeFile
from ..container.urls import basename, is_remote, local_path

#: Chunks in flight at once (each ``rangefile.CHUNK`` bytes).
IN_FLIGHT = 4


class TransferInterrupted(FormatError):
    """A download stopped midway; its bytes are kept and the same call resumes it."""


@dataclass
class DownloadReport:
    source: str
    path: str
    size: int
    uuid: str
    content_id: str
    transferred: int  # bytes fetched by this run
    resumed_from: int  # bytes already present from an earlier, interrupted run
    status: str  # "downloaded", or "present" (the target already held this checkpoint)

    def to_dict(self) -> dict:
        return asdict(self)


def as_url(location: str) -> str:
    """A location for :class:`RangeFile`: a URL unchanged, a local path as ``file://``."""
    local = local_path(location)
    # Not Path.as_uri(): it percent-encodes ("+" -> "%2B"), and fsspec takes file:// literally.
    return "file://" + os.path.abspath(local) if local is not None else location


def _same_checkpoint(path: str, uuid: str | None, content_id: str | None) -> tuple[str, str] | None:
    """(uuid, content id) of an intact ``.anc`` at ``path`` matching the expectation, else None."""
    from ..reader import open_checkpoint

    try:
        with open_checkpoint(path) as ck:
            if (uuid and ck.uuid != uuid) or (content_id and ck.content_id != content_id):
                return None
            if not ck.verify(progress=False).ok:
                return None
            return ck.uuid, ck.content_id
    except AncError:
        return None


def download(source: str, dest: str | os.PathLike, *, uuid: str | None = None,
             content_id: str | None = None, progress: bool | None = None) -> DownloadReport:
    """Fetch ``source`` (a URL or path) to ``dest`` (a file path, or an existing folder to put it
    in under its own name). ``uuid``/``content_id``: what the file must be (from a catalogue)."""
    dest = os.fspath(dest)
    if dest.endswith(("/", os.sep)):
        os.makedirs(dest, exist_ok=True)  # "-o models/": a folder, made if missing
    if os.path.isdir(dest):
        dest = os.path.join(dest, basename(source))
    if not os.path.isdir(os.path.dirname(os.path.abspath(dest))):
        raise UsageError(dest, "its folder does not exist", "give an existing folder, or end -o with /")
    if os.path.exists(dest):
        # Never overwrite: the same checkpoint already there is success, anything else an error.
        found = _same_checkpoint(dest, uuid, content_id)
        if found is None:
            raise UsageError(dest, "exists and is not the checkpoint being fetched",
                             "remove it or choose another -o")
        return DownloadReport(source, dest, os.path.getsize(dest), found[0], found[1], 0, 0, "present")
    folder, name = os.path.split(os.path.abspath(dest))
    part, meta_path = os.path.join(folder, f".{name}.part"), os.path.join(folder, f".{name}.part.json")
    if uuid or content_id:  # the manifest first (kilobytes): a wrong file is not downloaded
        _check_identity(source, uuid, content_id)
    remote = RangeFile(as_url(source))
    meta = {"source": source, "size": remote.size, "uuid": uuid, "content_id": content_id}
    start = _resumable_length(part, meta_path, meta)
    _write_record(meta_path, meta)
    out_fd = _open_part(part, start)
    written = os.fstat(out_fd)
    fetched_before = remote.bytes_fetched  # the open read the tail; count only the body below
    with os.fdopen(out_fd, "ab") as out, \
            Progress.for_bytes(remote.size, f"fetching {name}", progress) as bar:
        bar.update(start)
        try:
            _stream(remote, out, start, bar)
        except AncError as e:
            out.flush()
            have = out.tell()
            raise TransferInterrupted(source, f"transfer interrupted at byte {have:,} of {remote.size:,} "
                              f"({e.what})", f"the {have:,} bytes are kept in {part}; run the "
                              "same command again to resume") from None
        os.fsync(out.fileno())
    transferred = remote.bytes_fetched - fetched_before
    remote.close()
    got = _verify_part(part, source, uuid, content_id, written)
    os.replace(part, dest)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(meta_path)
    return DownloadReport(source, dest, os.path.getsize(dest), got[0], got[1], transferred, start,
                          "downloaded")


def _stream(remote: RangeFile, out: BinaryIO, pos: int, bar: Progress) -> None:
    """Append the remote bytes from ``pos`` to the end, :data:`IN_FLIGHT` chunks at a time,
    written in order (so an interrupted copy is a prefix of the source)."""
    while pos < remote.size:
        ranges = [(a, min(remote.size, a + CHUNK))
                  for a in range(pos, min(remote.size, pos + IN_FLIGHT * CHUNK), CHUNK)]
        for (_, b), data in zip(ranges, remote.iter_fetch(ranges)):
            out.write(data)
            bar.update(len(data))
            pos = b
        out.flush()


#: Largest ``.<name>.part.json`` read back (a record is about 300 bytes).
MAX_RECORD = 64 << 10
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _planted(path: str, st: os.stat_result) -> str | None:
    """Why the resume file ``path`` (lstat ``st``) is not one this user's fetch left, or None:
    a symbolic link, FIFO or other non-regular file, a file with other hard links (appending
    would change that other file), or one owned by another user."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_nlink != 1:
        return f"has {st.st_nlink} hard links"
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        return f"belongs to another user (uid {st.st_uid})"
    return None


def _refuse_planted(path: str) -> os.stat_result | None:
    """lstat of the resume file ``path`` (None when absent); a one-line UsageError when it is
    not a file this fetch can use (:func:`_planted`): never followed, written or trusted."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    why = _planted(path, st)
    if why is not None:
        raise UsageError(path, f"resume file {why}; not following or writing it",
                         "remove it, then run fetch again")
    return st


def _read_record(meta_path: str) -> object:
    """The resume record, read without following links and at most :data:`MAX_RECORD` bytes;
    None when absent, unreadable or not JSON (the download then starts afresh)."""
    if _refuse_planted(meta_path) is None:
        return None
    try:
        fd = os.open(meta_path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_RECORD:
            return None
        raw = os.read(fd, MAX_RECORD + 1)
    finally:
        os.close(fd)
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def _valid_record(old: object, meta: dict) -> bool:
    """``old`` is a resume record of exactly this transfer: the same keys and types, the same
    source, size, uuid and content id."""
    if not isinstance(old, dict) or set(old) != set(meta):
        return False
    if not isinstance(old["source"], str) or isinstance(old["size"], bool) or not isinstance(old["size"], int):
        return False
    if any(old[k] is not None and not isinstance(old[k], str) for k in ("uuid", "content_id")):
        return False
    return old == meta


def _resumable_length(part: str, meta_path: str, meta: dict) -> int:
    """Bytes of an earlier partial download of the same source to keep (0: start afresh).
    A planted resume file (symbolic link, FIFO, hard link, another user's) is refused."""
    st = _refuse_planted(part)
    old = _read_record(meta_path)
    size = st.st_size if st is not None else 0
    if st is None or not _valid_record(old, meta) or size > meta["size"]:
        # Another source, or the source changed size: the bytes present are not a prefix of it.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)  # unlink removes the entry itself, never what a link points to
        return 0
    return size


def _write_record(meta_path: str, meta: dict) -> None:
    """Write the resume record to a fresh file (O_EXCL, no links followed) and rename it over
    ``meta_path``: whatever was planted there is replaced, never written through."""
    folder, name = os.path.split(meta_path)
    fd, tmp = tempfile.mkstemp(prefix=name + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(meta, fh)
        os.replace(tmp, meta_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _open_part(part: str, start: int) -> int:
    """A descriptor appending to ``part``: created afresh (O_CREAT | O_EXCL | O_NOFOLLOW) when
    ``start`` is 0, else reopened without following links and checked to be the regular file
    of ``start`` bytes that was measured."""
    flags = os.O_WRONLY | os.O_APPEND | _NOFOLLOW | _CLOEXEC | getattr(os, "O_BINARY", 0)
    try:
        if start == 0:
            fd = os.open(part, flags | os.O_CREAT | os.O_EXCL, 0o666)
        else:
            fd = os.open(part, flags)
    except FileExistsError:
        raise UsageError(part, "resume file appeared while the download started; not writing it",
                         "remove it, then run fetch again") from None
    except OSError as e:  # ELOOP: a link planted since it was checked
        raise UsageError(part, f"cannot open the resume file without following links ({e.strerror})",
                         "remove it, then run fetch again") from None
    st = os.fstat(fd)
    why = _planted(part, st) or (None if st.st_size == start else "changed size while the download started")
    if why is not None:
        os.close(fd)
        raise UsageError(part, f"resume file {why}; not writing it", "remove it, then run fetch again")
    return fd


def _check_identity(source: str, uuid: str | None, content_id: str | None) -> None:
    from ..reader import open_checkpoint

    with open_checkpoint(source) as ck:
        _compare(source, ck.uuid, ck.content_id, uuid, content_id)


def _compare(source: str, got_uuid: str, got_cid: str, uuid: str | None, content_id: str | None) -> None:
    if uuid and got_uuid != uuid:
        raise IntegrityError(source, f"holds uuid {got_uuid}, expected {uuid}",
                             "the location holds another checkpoint")
    if content_id and got_cid != content_id:
        raise IntegrityError(source, f"content id {got_cid}, expected {content_id}",
                             "the location holds other weights than the catalogue records")


def _verify_part(part: str, source: str, uuid: str | None, content_id: str | None,
                 written: os.stat_result) -> tuple[str, str]:
    """Verify the downloaded bytes and check that ``part`` is still the very file written
    (``written``: its fstat), so no other file can be verified and renamed into place."""
    from ..reader import open_checkpoint

    replaced = UsageError(part, "resume file was replaced during the download; not using it",
                          "remove it, then run fetch again")
    with open_checkpoint(part) as ck:
        opened = os.fstat(ck._fh.fileno())
        if (opened.st_dev, opened.st_ino) != (written.st_dev, written.st_ino):
            raise replaced  # another file: never verified, renamed or deleted here
        try:
            _compare(source, ck.uuid, ck.content_id, uuid, content_id)
            report = ck.verify(progress=False)
            if not report.ok:
                bad = ", ".join(s.path for s in report.damaged) or "content id"
                raise IntegrityError(source, f"the downloaded file does not verify ({bad})",
                                     "the partial download was removed; run fetch again")
            return ck.uuid, ck.content_id
        except AncError:
            # bytes of the very file written that fail verification are not worth resuming from
            for leftover in (part, part + ".json"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)
            raise


@contextlib.contextmanager
def localized(location: str | os.PathLike, *, progress: bool | None = None) -> Iterator[str]:
    """A local path for ``location``: itself when local, else a temporary copy under the same
    name, removed afterwards. For commands that need a whole local file (converting a pickle
    from a URL); ``.anc`` readers use byte ranges instead."""
    location = os.fspath(location)
    local = local_path(location)
    if local is not None:
        yield local
        return
    tmp = tempfile.mkdtemp(prefix="anemoi-ckpt-")
    try:
        remote = RangeFile(location)
        dest = os.path.join(tmp, basename(location))
        with open(dest, "wb") as out, \
                Progress.for_bytes(remote.size, f"fetching {basename(location)}", progress) as bar:
            _stream(remote, out, 0, bar)
        remote.close()
        yield dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_remote_output(path: str | os.PathLike) -> None:
    """Outputs are written atomically on a local filesystem; a URL output is refused early."""
    if is_remote(os.fspath(path)):
        raise FormatError(os.fspath(path), "cannot write to a URL",
                          "write a local file, then upload it (or 'catalogue register' its URL)")
