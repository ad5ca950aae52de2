"""The catalogue file: one SQLite database in WAL mode, its schema and its error policy.

WAL lets readers run while one process writes, and ``busy_timeout`` makes concurrent writers
(several ``register`` runs on a cluster's login node) queue instead of failing. Every problem with
the file itself (missing, not SQLite, another application's database, damaged, newer schema,
locked too long) becomes one :class:`CatalogueError` line naming the file.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Union

from ..errors import AncError, VersionError

#: ``PRAGMA application_id``: tells a catalogue from any other SQLite file ("ANCC").
APPLICATION_ID = 0x414E4343
#: ``PRAGMA user_version``: bumped with every schema change; a newer one is refused.
SCHEMA_VERSION = 1
#: Writers wait this long for the lock: registrations from many jobs queue rather than fail.
BUSY_TIMEOUT_S = 60.0

SCHEMA = """
CREATE TABLE checkpoints (
    uuid TEXT PRIMARY KEY,
    content_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    size INTEGER,
    created TEXT NOT NULL,
    registered TEXT NOT NULL,
    format_version TEXT,
    operation TEXT,
    record_json TEXT NOT NULL
);
CREATE INDEX checkpoints_created ON checkpoints(created);
CREATE INDEX checkpoints_kind ON checkpoints(kind, created);
CREATE TABLE locations (
    uuid TEXT NOT NULL REFERENCES checkpoints(uuid) ON DELETE CASCADE,
    location TEXT NOT NULL,
    added TEXT NOT NULL,
    PRIMARY KEY (uuid, location)
);
-- registering a file at a path drops stale claims of other checkpoints on that path
CREATE INDEX locations_location ON locations(location);
CREATE TABLE tags (
    uuid TEXT NOT NULL REFERENCES checkpoints(uuid) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    added TEXT NOT NULL,
    PRIMARY KEY (uuid, tag)
);
CREATE INDEX tags_tag ON tags(tag, uuid);
-- History, not inventory: edges and records outlive a checkpoint removed by gc, so the lineage
-- of its descendants still resolves. The primary key indexes child, parent needs its own.
CREATE TABLE edges (
    child TEXT NOT NULL,
    parent TEXT NOT NULL,
    role TEXT,
    parent_content_id TEXT,
    PRIMARY KEY (child, parent)
);
CREATE INDEX edges_parent ON edges(parent, child);
CREATE TABLE records (
    uuid TEXT PRIMARY KEY,
    content_id TEXT NOT NULL,
    record_json TEXT NOT NULL
);
"""

Db = Union[str, os.PathLike, sqlite3.Connection]


class CatalogueError(AncError):
    """A problem with the catalogue file or with what was asked of it."""


class CatalogueConnection(sqlite3.Connection):
    """A connection that knows its file, so errors raised far from :func:`connect` can name it."""

    path: str = ""


def default_path() -> str:
    """``$ANEMOI_CKPT_CATALOGUE``, else ``~/.anemoi-ckpt/catalogue.db``."""
    return os.environ.get("ANEMOI_CKPT_CATALOGUE") or os.path.join(
        os.path.expanduser("~"), ".anemoi-ckpt", "catalogue.db")


def connect(path: str | os.PathLike, *, create: bool = False,
            timeout: float = BUSY_TIMEOUT_S) -> CatalogueConnection:
    """Open (``create=True``: create if missing) the catalogue at ``path``.

    The connection is in autocommit mode: writers use :func:`write_txn` (``BEGIN IMMEDIATE``)."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise CatalogueError(path, "is a directory, not a catalogue")
    if not os.path.exists(path):
        if not create:
            raise CatalogueError(path, "no such catalogue",
                                 "register a file first: anemoi-ckpt catalogue register FILE")
        os.makedirs(os.path.dirname(path), exist_ok=True)
    # mode=rw: a read command must never leave an empty database behind a mistyped name.
    uri = Path(path).as_uri() + ("?mode=rwc" if create else "?mode=rw")
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None,
                               factory=CatalogueConnection, check_same_thread=False)
    except sqlite3.Error as e:
        raise CatalogueError(path, f"cannot open the catalogue ({e})") from None
    conn.path = path
    try:
        with translate_errors(conn):
            conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            _check_or_init(conn, path, create, timeout)
    except BaseException:
        conn.close()
        raise
    return conn


def _identity(conn: sqlite3.Connection) -> tuple[int, int, int]:
    # One read snapshot: read apart, the three could straddle another process creating the file.
    own_txn = not conn.in_transaction
    if own_txn:
        conn.execute("BEGIN")
    try:
        app = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    finally:
        if own_txn:
            conn.execute("COMMIT")
    return app, version, objects


def _check_or_init(conn: sqlite3.Connection, path: str, create: bool, timeout: float) -> None:
    # Identify the file before changing anything: switching another application's database to
    # WAL would alter a file that is not ours.
    app, version, objects = _identity(conn)
    empty = app == 0 and version == 0 and objects == 0
    if not empty:
        _check_identity(path, app, version)
    elif not create:
        raise CatalogueError(path, "not a catalogue (an empty SQLite database)",
                             "'anemoi-ckpt catalogue register' initialises it")
    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        _set_wal(conn, timeout)
    # NORMAL in WAL mode: a commit survives a crash of the process (the WAL is written before
    # COMMIT returns), only a power cut may lose the last commits; the file stays consistent.
    conn.execute("PRAGMA synchronous = NORMAL")
    if empty:
        with write_txn(conn):
            app, version, objects = _identity(conn)  # another process may have won the race
            if app == 0 and version == 0 and objects == 0:
                # one statement at a time: executescript() would COMMIT mid-transaction (no ';'
                # in SCHEMA's comments, then)
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            else:
                _check_identity(path, app, version)


def _check_identity(path: str, app: int, version: int) -> None:
    if app != APPLICATION_ID:
        raise CatalogueError(path, "not an anemoi-ckpt catalogue (an SQLite database of another "
                             "application)")
    if version > SCHEMA_VERSION:
        raise VersionError(path, f"catalogue schema version {version} is newer than this "
                           f"anemoi-ckpt reads ({SCHEMA_VERSION})", "upgrade anemoi-ckpt")
    if version < 1:
        raise CatalogueError(path, f"not a catalogue (schema version {version})")


def _set_wal(conn: sqlite3.Connection, timeout: float) -> None:
    # Changing the journal mode needs an exclusive lock, and SQLite may answer "locked" at once
    # instead of calling the busy handler while other processes create the same file: retry.
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextlib.contextmanager
def write_txn(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``: the write lock is taken up front (no deadlock between
    two readers upgrading), and an exception, or the process dying, leaves nothing of it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def db_path(conn: sqlite3.Connection) -> str:
    path = getattr(conn, "path", "")
    if path:
        return path
    with contextlib.suppress(sqlite3.Error):
        for _, name, file in conn.execute("PRAGMA database_list"):
            if name == "main":
                return file or ":memory:"
    return "catalogue"


def _describe(e: sqlite3.Error) -> tuple[str, str | None]:
    text = str(e)
    if "file is not a database" in text:
        return "not a catalogue (not an SQLite database)", None
    if "malformed" in text or "corrupt" in text:
        return f"damaged catalogue ({text})", ("recover it with 'sqlite3 FILE .recover', or "
                                               "register the files again into a new one")
    if "locked" in text or "busy" in text:
        return "the catalogue is locked by another process", "try again when it has finished"
    return f"catalogue error ({text})", None


@contextlib.contextmanager
def translate_errors(conn: sqlite3.Connection | str) -> Iterator[None]:
    """Turn any SQLite error into one :class:`CatalogueError` line naming the file."""
    try:
        yield
    except sqlite3.Error as e:
        path = conn if isinstance(conn, str) else db_path(conn)
        what, hint = _describe(e)
        raise CatalogueError(path, what, hint) from None


@contextlib.contextmanager
def opened(db: Db, *, create: bool = False) -> Iterator[sqlite3.Connection]:
    """A connection for one API call: ``db`` as given if it is one, else opened and closed here."""
    if isinstance(db, sqlite3.Connection):
        with translate_errors(db):
            yield db
        return
    conn = connect(db, create=create)
    try:
        with translate_errors(conn):
            yield conn
    finally:
        conn.close()
