"""Locations that are URLs: ``s3://``, ``http(s)://``, ``file://`` and any other fsspec protocol.

A plain path (or ``file://``) is read through a private memory map; any other URL through
:class:`~anemoi_ckpt.container.rangefile.RangeFile`, which fetches only the byte ranges asked for.
Filesystem options come from fsspec's own configuration, e.g. ``FSSPEC_S3_ENDPOINT_URL`` or the
usual ``AWS_*`` variables for S3, so nothing about credentials passes through anemoi-ckpt.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit

from ..errors import FormatError

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")

#: The package each protocol needs, for the one-line error when it is missing.
_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "http": "aiohttp", "https": "aiohttp", "gs": "gcsfs",
             "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


def is_url(location: str | os.PathLike) -> bool:
    """True for ``<scheme>://...`` (``file://`` included); False for a plain path."""
    return isinstance(location, str) and bool(_URL.match(location))


def local_path(location: str | os.PathLike) -> str | None:
    """The local path a location names: itself for a path, the path of a ``file://`` URL, None for
    any other URL."""
    if not is_url(location):
        return os.fspath(location)
    text = str(location)
    if protocol(text) != "file":
        return None
    # Taken literally, as fsspec does: no percent-decoding, and "#" or "?" are part of the name.
    rest = text[len("file://"):]
    if rest.startswith("localhost/"):
        rest = rest[len("localhost"):]
    if not rest.startswith("/"):
        raise FormatError(text, f"file:// URL names host {rest.split('/', 1)[0]!r}",
                          "use file:///absolute/path")
    return rest


def ambiguous(location: str | os.PathLike) -> str | None:
    """Why ``location`` may name different objects depending on who parses it, or None.

    Used where a location is acted on, not just read (``catalogue gc`` deletes it): fsspec
    chains ``a::b`` URLs, reads ``file://localhost/x`` as the relative path ``localhost/x``,
    and URL parsers decode ``%xx`` and cut at ``?`` / ``#``, all of which :func:`local_path`
    takes literally; a relative path depends on the working directory."""
    text = os.fspath(location)
    if not isinstance(text, str):
        return "not a text location"
    if "::" in text:
        return "a chained URL ('::')"
    if not is_url(text):
        return None if os.path.isabs(text) else "a relative path (it depends on the working directory)"
    if protocol(text) == "file":
        rest = text[len("file://"):]
        if not rest.startswith("/"):
            return f"a file:// URL naming a host ({rest.split('/', 1)[0]!r})"
        if rest.startswith("//"):
            return "a file:// URL with an empty path segment after the host"
        if any(c in rest for c in "%?#"):
            return "a file:// URL holding '%', '?' or '#' (read literally here, decoded or cut by URL parsers)"
    return None


def is_remote(location: str | os.PathLike) -> bool:
    return local_path(location) is None


def protocol(url: str) -> str:
    return url.split("://", 1)[0].lower()


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path within it) for a remote URL; one-line errors when the protocol is
    unknown or its package is not installed."""
    try:
        import fsspec.core
    except ImportError:  # pragma: no cover - a core dependency
        raise FormatError(url, "reading URLs needs fsspec", "pip install fsspec") from None
    proto = protocol(url)
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError:
        pkg = _PACKAGES.get(proto, f"the fsspec backend for {proto}://")
        raise FormatError(url, f"{proto}:// URLs need {pkg}",
                          "pip install 'anemoi-ckpt[remote]'") from None
    except ValueError as e:
        if "Protocol not known" in str(e):
            raise FormatError(url, f"unknown protocol {proto}://",
                              "use a path, file://, http(s)://, s3:// or another fsspec protocol") from None
        raise FormatError(url, f"invalid URL ({e})") from None
    return fs, path


def describe_error(e: BaseException) -> str:
    """A short reason for a failed remote read (the exception types differ per backend)."""
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, PermissionError):
        return "permission denied"
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}"[:300] if text else type(e).__name__


def basename(location: str) -> str:
    """The last path component of a path or URL (query and fragment dropped)."""
    if is_url(location):
        name = os.path.basename(urlsplit(location).path.rstrip("/"))
        # "." or ".." would name a folder, not a file, when joined to an output folder
        return name if name not in ("", ".", "..") else "checkpoint.anc"
    return os.path.basename(os.fspath(location).rstrip("/"))
