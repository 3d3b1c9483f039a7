"""Database connection and schema management.

:class:`Database` wraps one SQLAlchemy engine.  SQLite (the embedded default) is
opened in WAL mode with a busy timeout, and every transaction starts with
``BEGIN IMMEDIATE`` so writers queue on the database lock instead of failing to
upgrade a read snapshot.  PostgreSQL is reached through ``postgresql+psycopg://``.

The hub calls :meth:`Database.upgrade` at start-up: it runs ``alembic upgrade head``
and refuses (:class:`SchemaTooNew`) a database whose revision this code does not know,
which is what a database upgraded by a newer hybridhub looks like.

A large transaction (the metering tick) goes through :meth:`Database.bulk_session`: on
SQLite its commit only appends to the WAL, and the checkpoint that copies the WAL into
the database file runs next in a background thread, as PostgreSQL's checkpointer does,
instead of inside the commit.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

DEFAULT_URL = "sqlite:///hybridhub.sqlite"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 30.0
#: SQLite's page cache per connection (its default is 2 MiB): a tick's inserts land at
#: scattered places in the ledger's indexes, and every miss is a read from the file.
SQLITE_CACHE_KIB = 65536
#: SQLite's default WAL size (pages) at which a commit also checkpoints.
SQLITE_AUTOCHECKPOINT_PAGES = 1000


class SchemaTooNew(RuntimeError):
    """The database carries an alembic revision this version of hybridhub does not know."""

    def __init__(self, url: str, found: str, head: str):
        self.found = found
        self.head = head
        super().__init__(
            f"database {url} is at schema revision {found!r}, which this hybridhub does not "
            f"know (its newest is {head!r}); it was probably upgraded by a newer hybridhub. "
            "Run that newer version, or restore a backup made before the upgrade."
        )


def alembic_config(url: str | None = None) -> Config:
    """An alembic :class:`Config` for hybridhub's migrations, built without an ini file."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The newest schema revision this code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


#: Execution option marking the engine of :meth:`Database.reading` (a deferred, lock-free BEGIN on SQLite).
READ_ONLY = "hybridhub_read_only"


#: ``Session.info`` key of a reading's memo: answers a reading asks more than once (see :func:`read_memo`).
READ_MEMO = "hybridhub_read_memo"


def read_memo(session: Session) -> dict | None:
    """The memo of a :meth:`Database.reading` session (None outside one): one transaction sees
    one snapshot, so a question asked twice in it has one answer."""
    return session.info.get(READ_MEMO)


#: ``Session.info`` keys of a reading: the database's data version taken before its snapshot
#: (:meth:`Database.data_version`), and the database's answers kept across readings (:func:`unchanged`).
DATA_VERSION = "hybridhub_data_version"
UNCHANGED = "hybridhub_unchanged"
#: The longest :func:`unchanged` reuses an answer, even with no write committed since.
UNCHANGED_SECONDS = 10.0
#: PostgreSQL's data version: its WAL position, which moves with every write as it is made.
_PG_LSN = "SELECT pg_current_wal_insert_lsn()"
#: A reading's data version on a read-committed PostgreSQL: asked in the reading itself, at its first
#: :func:`unchanged` (a reading that reuses nothing never asks).
_LSN_AT_FIRST_USE = object()
#: How a reading on PostgreSQL learns the data version: "lazy" (inside the reading, at its first reuse: the
#: server's readings are read committed), "eager" (on a connection of its own, before the reading begins), or
#: "none" (the server cannot tell it: a standby; nothing is reused).
PG_VERSION_MODES = ("lazy", "eager", "none")


def unchanged(session: Session, key: Hashable, compute: Callable[[], Any]) -> Any:
    """``compute()``, or its answer from an earlier :meth:`Database.reading` if no write has been
    committed to the database since that reading began (and at most :data:`UNCHANGED_SECONDS` ago).

    For reads that many users' pages share (a lecture hall's pickers: their groups' budgets, trust
    policies and burn rates), so that a page reads only what is its user's own.  ``compute`` must
    return plain values or rows, read-only from then on.  Outside a reading, or where the database
    cannot tell its version, ``compute()`` every time.
    """
    version, kept = session.info.get(DATA_VERSION), session.info.get(UNCHANGED)
    if version is None or kept is None:
        return compute()
    if version is _LSN_AT_FIRST_USE:  # PostgreSQL, read committed: every later statement sees at least this
        version = session.info[DATA_VERSION] = session.execute(text(_PG_LSN)).scalar()
    now = time.monotonic()
    found = kept.get(key)
    if found is not None and found[0] == version and now - found[1] < UNCHANGED_SECONDS:
        return found[2]
    value = compute()
    if len(kept) > 4096:
        kept.clear()
    kept[key] = (version, now, value)
    return value


def _setup_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite so BEGIN IMMEDIATE can be issued.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        if engine.url.database not in (None, "", ":memory:"):
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # a read (Database.reading) takes no write lock: it waits for no writer, none waits for it
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")


_WRITE_IN_READING = "a write inside Database.reading(); use Database.session()"


def _refuse_writes(state: Any) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        raise RuntimeError(_WRITE_IN_READING)


def _refuse_flush(session: Session, *_: Any) -> None:  # its commit flushes: this runs then at the latest
    if session.new or session.dirty or session.deleted:
        raise RuntimeError(_WRITE_IN_READING)


class Database:
    """One database: an engine, a session factory and schema upgrades."""

    def __init__(self, url: str = DEFAULT_URL, **engine_kwargs: Any):
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        if self.dialect == "sqlite":
            engine_kwargs.setdefault("connect_args", {})
            engine_kwargs["connect_args"].setdefault("timeout", SQLITE_BUSY_TIMEOUT_S)
            engine_kwargs["connect_args"].setdefault("check_same_thread", False)
        self.engine: Engine = create_engine(url, **engine_kwargs)
        if self.dialect == "sqlite":
            _setup_sqlite(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(
            self.engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False, autoflush=False)
        self._reading = threading.local()  # the thread's open Database.reading() session, if any
        event.listen(self._read_sessions, "do_orm_execute", _refuse_writes)
        event.listen(self._read_sessions, "before_flush", _refuse_flush)
        self._wal = self.dialect == "sqlite" and parsed.database not in (None, "", ":memory:")
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_lock = threading.Lock()
        # SQLite: the one connection that only asks data_version, for every thread (its counter is the
        # connection's own: two connections' values do not compare)
        self._version_conn: sqlite3.Connection | None = None
        self._version_lock = threading.Lock()
        # PostgreSQL: how a reading learns the data version (:data:`PG_VERSION_MODES`); None: not asked yet
        self._pg_version: str | None = None
        self._unchanged: dict[Hashable, tuple[Any, float, Any]] = {}

    def __repr__(self) -> str:
        return f"Database({make_url(self.url).render_as_string(hide_password=True)!r})"

    @property
    def safe_url(self) -> str:
        """The URL with any password hidden, for messages and logs."""
        return make_url(self.url).render_as_string(hide_password=True)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error.

        Inside :meth:`reading` on the same thread, the reading's own session (no new transaction).
        """
        shared = getattr(self._reading, "session", None)
        if shared is not None:
            yield shared
            return
        with self._sessions() as session:
            with session.begin():
                yield session

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """One read-only transaction for every :meth:`session` this thread opens inside it.

        A page that makes several reads (the picker: course seat, budgets, trust, banners,
        forecasts) pays for one connection checkout, BEGIN and COMMIT instead of one per read,
        and on SQLite takes no write lock.  Writing inside it is an error.
        """
        if getattr(self._reading, "session", None) is not None:
            yield self._reading.session
            return
        # SQLite: before the snapshot (fixed at its first read), so a write in between only makes it look older
        version = _LSN_AT_FIRST_USE if self._pg_version == "lazy" else self.data_version()
        with self._read_sessions() as session, session.begin():
            session.info[READ_MEMO] = {}
            if version is not None:
                session.info[DATA_VERSION], session.info[UNCHANGED] = version, self._unchanged
            self._reading.session = session
            try:
                yield session
            finally:
                self._reading.session = None

    def data_version(self) -> Any:
        """A value that changes whenever any connection commits a write to the database; None where
        it cannot be told (an in-memory SQLite, a PostgreSQL standby).

        SQLite: ``PRAGMA data_version`` on one connection that never writes (so every commit is
        another connection's), shared by all threads under a lock: each connection counts on its own.
        PostgreSQL: ``pg_current_wal_insert_lsn()``, which moves with every write as it is made
        (committed or not) and also for other databases of the server: those only cost a re-read.
        """
        if self._wal:
            with self._version_lock:
                if self._version_conn is None:
                    self._version_conn = sqlite3.connect(make_url(self.url).database, check_same_thread=False)
                return self._version_conn.execute("PRAGMA data_version").fetchone()[0]
        if self.dialect != "postgresql" or self._pg_version == "none":
            return None
        try:
            with self.engine.connect() as conn:
                lsn = conn.execute(text(_PG_LSN)).scalar()
                if self._pg_version is None:  # first use: may later readings ask it themselves, lazily?
                    level = conn.execute(text("SHOW transaction_isolation")).scalar()
                    self._pg_version = "lazy" if level == "read committed" else "eager"
        except Exception:  # a standby ("recovery is in progress"), or no such function
            self._pg_version = "none"
            return None
        return lsn

    @contextmanager
    def bulk_session(self) -> Iterator[Session]:
        """:meth:`session` for one large transaction; on a SQLite file its commit leaves
        the checkpoint to a background thread (:meth:`wait_checkpoint` waits for it)."""
        if not self._wal:
            with self.session() as session:
                yield session
            return
        with self.engine.connect() as conn:
            raw = conn.connection.dbapi_connection  # outside the transaction (PRAGMA)
            raw.execute("PRAGMA wal_autocheckpoint = 0")
            try:
                with Session(bind=conn, expire_on_commit=False) as session, session.begin():
                    yield session
            finally:
                raw.execute(f"PRAGMA wal_autocheckpoint = {SQLITE_AUTOCHECKPOINT_PAGES}")
        with self._checkpoint_lock:
            if self._checkpointer is None or not self._checkpointer.is_alive():
                self._checkpointer = threading.Thread(
                    target=self._checkpoint, name="sqlite-checkpoint", daemon=True)
                self._checkpointer.start()

    def _checkpoint(self) -> None:
        """A passive checkpoint: copies what it can without waiting for readers or writers."""
        with self.engine.connect() as conn:
            conn.connection.dbapi_connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def wait_checkpoint(self) -> None:
        """Wait for the checkpoint :meth:`bulk_session` started, if it still runs."""
        with self._checkpoint_lock:
            checkpointer = self._checkpointer
        if checkpointer is not None:
            checkpointer.join()

    def current_revision(self) -> str | None:
        """The alembic revision stored in the database (None for an empty database)."""
        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def check_revision(self) -> None:
        """Raise :class:`SchemaTooNew` if the database is at a revision this code lacks."""
        script = ScriptDirectory.from_config(alembic_config())
        current = self.current_revision()
        if current is None:
            return
        try:
            known = script.get_revision(current)
        except Exception:  # alembic raises ResolutionError/CommandError subclasses
            known = None
        if known is None:
            raise SchemaTooNew(self.safe_url, current, head_revision())

    def upgrade(self, revision: str = "head") -> None:
        """Upgrade the schema (``alembic upgrade head``); refuse an unknown newer schema."""
        self.check_revision()
        cfg = alembic_config(self.url)
        with self.engine.connect() as conn:
            sqlite = conn.dialect.name == "sqlite"
            raw = conn.connection.dbapi_connection  # outside any transaction (PRAGMA needs it)
            if sqlite:  # batch migrations rebuild tables; a DROP would trip foreign keys
                raw.execute("PRAGMA foreign_keys = OFF")
            try:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
                if sqlite and conn.exec_driver_sql("PRAGMA foreign_key_check").first():
                    raise RuntimeError("a migration left rows with broken foreign keys")
                conn.commit()
            finally:
                if sqlite:
                    conn.rollback()
                    raw.execute("PRAGMA foreign_keys = ON")

    def dispose(self) -> None:
        """Close all pooled connections (after a running checkpoint) and the data-version connection."""
        self.wait_checkpoint()
        self.engine.dispose()
        with self._version_lock:
            if self._version_conn is not None:
                self._version_conn.close()
                self._version_conn = None
