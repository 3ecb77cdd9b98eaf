"""The service's state: one SQLite database (WAL) with organisations, API keys, files, jobs,
job events, checkpoints and fine-tuned models.

Every function opens its own short connection: SQLite connections are cheap, WAL lets the API
threads read while the worker thread writes, and nothing is shared between threads. Rows come
back as plain dicts (JSON columns decoded); the API turns them into OpenAI-shaped objects.
Lookups take the organisation id, so another organisation's id reads exactly like a missing one.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import string
import time
from contextlib import contextmanager
from pathlib import Path

from tunesmith.runfolder import finite

SCHEMA = """
CREATE TABLE IF NOT EXISTS orgs (
    id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys (
    key_hash TEXT PRIMARY KEY, org_id TEXT NOT NULL REFERENCES orgs(id), created_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, org_id TEXT NOT NULL,
    filename TEXT NOT NULL, purpose TEXT NOT NULL, bytes INTEGER NOT NULL, created_at INTEGER NOT NULL,
    path TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'processed');
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, org_id TEXT NOT NULL,
    model TEXT NOT NULL, training_file TEXT NOT NULL, validation_file TEXT, suffix TEXT,
    seed INTEGER NOT NULL, metadata TEXT, hyperparameters TEXT NOT NULL, status TEXT NOT NULL,
    error TEXT, fine_tuned_model TEXT, trained_tokens INTEGER, result_files TEXT NOT NULL DEFAULT '[]',
    created_at INTEGER NOT NULL, started_at INTEGER, finished_at INTEGER, estimated_finish INTEGER,
    run_dir TEXT NOT NULL, total_steps INTEGER, pid INTEGER, attempts INTEGER NOT NULL DEFAULT 0,
    metrics_offset INTEGER NOT NULL DEFAULT 0, last_metrics_step INTEGER NOT NULL DEFAULT 0,
    procs INTEGER NOT NULL DEFAULT 1, train_seconds REAL NOT NULL DEFAULT 0,
    integrations TEXT NOT NULL DEFAULT '[]');
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL, level TEXT NOT NULL, message TEXT NOT NULL, type TEXT NOT NULL,
    data TEXT);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id, seq);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, job_id TEXT NOT NULL,
    step INTEGER NOT NULL, created_at INTEGER NOT NULL, metrics TEXT NOT NULL, path TEXT NOT NULL,
    model_name TEXT NOT NULL, UNIQUE(job_id, step));
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY, org_id TEXT NOT NULL, job_id TEXT NOT NULL, base TEXT NOT NULL,
    adapter_path TEXT NOT NULL, created INTEGER NOT NULL);
"""

_JSON_COLUMNS = {"metadata", "hyperparameters", "error", "result_files", "data", "metrics", "integrations"}
TERMINAL = ("succeeded", "failed", "cancelled")
ACTIVE = ("validating_files", "queued", "running", "paused")
_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(length))


def now() -> int:
    return int(time.time())


def _dump(value) -> str | None:
    return None if value is None else json.dumps(finite(value), allow_nan=False)


def _load(text: str):
    # Rows written before non-finite numbers were refused may still hold NaN: read it as null.
    return json.loads(text, parse_constant=lambda _: None)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class Store:
    """The database at ``home/tunesmith.db``; uploaded files live in ``home/files``, runs in ``home/runs``."""

    def __init__(self, home: str | Path):
        self.home = Path(home)
        self.files_dir = self.home / "files"
        self.runs_dir = self.home / "runs"
        for folder in (self.home, self.files_dir, self.runs_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.path = self.home / "tunesmith.db"
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            # Columns added since the first release, for databases created before them.
            columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
            if "procs" not in columns:
                db.execute("ALTER TABLE jobs ADD COLUMN procs INTEGER NOT NULL DEFAULT 1")
            if "train_seconds" not in columns:
                db.execute("ALTER TABLE jobs ADD COLUMN train_seconds REAL NOT NULL DEFAULT 0")
            if "integrations" not in columns:
                db.execute("ALTER TABLE jobs ADD COLUMN integrations TEXT NOT NULL DEFAULT '[]'")

    @contextmanager
    def _connect(self):
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout=30000")
        db.execute("PRAGMA synchronous=NORMAL")
        try:
            yield db
        finally:
            db.close()

    @staticmethod
    def _row(row) -> dict | None:
        if row is None:
            return None
        out = dict(row)
        for key in _JSON_COLUMNS & out.keys():
            if out[key] is not None:
                out[key] = _load(out[key])
        return out

    def _one(self, sql: str, args=()) -> dict | None:
        with self._connect() as db:
            return self._row(db.execute(sql, args).fetchone())

    def _all(self, sql: str, args=()) -> list[dict]:
        with self._connect() as db:
            return [self._row(r) for r in db.execute(sql, args).fetchall()]

    def _write(self, sql: str, args=()) -> int:
        with self._connect() as db:
            return db.execute(sql, args).rowcount

    # --- organisations and keys ---------------------------------------------------------------

    def create_key(self, org_name: str) -> str:
        """Create the organisation if new and return a fresh API key; only its sha256 is stored."""
        key = "sk-ts-" + secrets.token_urlsafe(32)
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT id FROM orgs WHERE name = ?", (org_name,)).fetchone()
            org_id = row["id"] if row else new_id("org-")
            if row is None:
                db.execute("INSERT INTO orgs VALUES (?, ?, ?)", (org_id, org_name, now()))
            db.execute("INSERT INTO api_keys VALUES (?, ?, ?)", (hash_key(key), org_id, now()))
            db.execute("COMMIT")
        return key

    def org_for_key(self, key: str) -> dict | None:
        return self._one(
            "SELECT orgs.* FROM api_keys JOIN orgs ON orgs.id = api_keys.org_id WHERE key_hash = ?",
            (hash_key(key),),
        )

    def list_keys(self) -> list[dict]:
        """Every key as its sha256 (the key itself is never stored), with its organisation."""
        return self._all(
            "SELECT api_keys.key_hash, api_keys.created_at, orgs.name AS org FROM api_keys "
            "JOIN orgs ON orgs.id = api_keys.org_id ORDER BY api_keys.created_at, orgs.name"
        )

    def revoke_key(self, key_or_hash_prefix: str) -> list[str]:
        """Delete the key given itself or by a prefix (8+ characters) of its sha256; the hashes removed.

        A prefix that matches more than one key removes none: the caller must be more specific.
        """
        text = key_or_hash_prefix.strip()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            hashes = [hash_key(text)]
            if not db.execute("SELECT 1 FROM api_keys WHERE key_hash = ?", hashes).fetchone():
                hashes = []
                if len(text) >= 8:
                    sql = "SELECT key_hash FROM api_keys WHERE substr(key_hash, 1, ?) = ?"
                    hashes = [r["key_hash"] for r in db.execute(sql, (len(text), text.lower()))]
            if len(hashes) == 1:
                db.execute("DELETE FROM api_keys WHERE key_hash = ?", hashes)
            db.execute("COMMIT")
        return hashes

    def org(self, org_id: str) -> dict | None:
        return self._one("SELECT * FROM orgs WHERE id = ?", (org_id,))

    # --- files ----------------------------------------------------------------------------------

    def add_file(self, file_id: str, org_id: str, filename: str, purpose: str, size: int, path: str) -> dict:
        self._write(
            "INSERT INTO files (id, org_id, filename, purpose, bytes, created_at, path) VALUES (?,?,?,?,?,?,?)",
            (file_id, org_id, filename, purpose, size, now(), path),
        )
        return self.file(org_id, file_id)

    def file(self, org_id: str, file_id: str) -> dict | None:
        return self._one("SELECT * FROM files WHERE id = ? AND org_id = ?", (file_id, org_id))

    def list_files(self, org_id: str, purpose: str | None, after: str | None, limit: int, order: str) -> list[dict]:
        sql, args = "SELECT * FROM files WHERE org_id = ?", [org_id]
        if purpose:
            sql, args = sql + " AND purpose = ?", [*args, purpose]
        cmp, direction = ("<", "DESC") if order == "desc" else (">", "ASC")
        if after:
            sql += f" AND seq {cmp} COALESCE((SELECT seq FROM files WHERE id = ? AND org_id = ?), -1)"
            args += [after, org_id]
        return self._all(sql + f" ORDER BY seq {direction} LIMIT ?", [*args, limit])

    def remove_orphans(self) -> list[Path]:
        """Delete what a killed server left in ``files/``: uploads never registered, half-written results."""
        with self._connect() as db:
            known = {Path(r["path"]).name for r in db.execute("SELECT path FROM files")}
        removed = [p for p in self.files_dir.iterdir() if p.is_file() and p.name not in known]
        for path in removed:
            path.unlink(missing_ok=True)
        return removed

    def org_usage(self, org_id: str) -> tuple[int, int]:
        """The organisation's stored files: how many, and their bytes."""
        with self._connect() as db:
            row = db.execute("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM files WHERE org_id = ?", (org_id,))
            return tuple(row.fetchone())

    def delete_file(self, org_id: str, file_id: str) -> bool:
        return self._write("DELETE FROM files WHERE id = ? AND org_id = ?", (file_id, org_id)) > 0

    # --- jobs -----------------------------------------------------------------------------------

    def add_job(self, job: dict, max_active: int | None = None) -> dict | None:
        """Insert ``job``; with ``max_active``, only if its organisation has fewer unfinished jobs
        (None if not). Counted and inserted in one transaction, so concurrent creates cannot both
        pass the cap."""
        row = dict(job)
        for key in _JSON_COLUMNS & row.keys():
            row[key] = _dump(row[key])
        names = ", ".join(row)
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                if max_active is not None and self._count_active(db, job["org_id"]) >= max_active:
                    return None
                db.execute(f"INSERT INTO jobs ({names}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
            finally:
                db.execute("COMMIT")
        return self.job(job["org_id"], job["id"])

    def job(self, org_id: str | None, job_id: str) -> dict | None:
        if org_id is None:  # the worker's view: any organisation
            return self._one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return self._one("SELECT * FROM jobs WHERE id = ? AND org_id = ?", (job_id, org_id))

    def list_jobs(
        self, org_id: str, after: str | None, limit: int, metadata: dict[str, str] | None = None
    ) -> list[dict]:
        """Newest first; with ``metadata``, only jobs whose metadata has every one of its pairs."""
        sql, args = "SELECT * FROM jobs WHERE org_id = ?", [org_id]
        for key, value in (metadata or {}).items():
            sql += " AND EXISTS (SELECT 1 FROM json_each(jobs.metadata) WHERE key = ? AND value = ?)"
            args += [key, value]
        if after:
            sql += " AND seq < COALESCE((SELECT seq FROM jobs WHERE id = ? AND org_id = ?), -1)"
            args += [after, org_id]
        return self._all(sql + " ORDER BY seq DESC LIMIT ?", [*args, limit])

    def count_active_jobs(self, org_id: str) -> int:
        with self._connect() as db:
            return self._count_active(db, org_id)

    @staticmethod
    def _count_active(db, org_id: str) -> int:
        marks = ", ".join("?" * len(ACTIVE))
        sql = f"SELECT COUNT(*) FROM jobs WHERE org_id = ? AND status IN ({marks})"
        return db.execute(sql, (org_id, *ACTIVE)).fetchone()[0]

    def active_jobs_using_file(self, org_id: str, file_id: str) -> list[str]:
        marks = ", ".join("?" * len(ACTIVE))
        sql = (
            f"SELECT id FROM jobs WHERE org_id = ? AND status IN ({marks}) "
            "AND (training_file = ? OR validation_file = ?) ORDER BY seq"
        )
        return [r["id"] for r in self._all(sql, (org_id, *ACTIVE, file_id, file_id))]

    def jobs_with_status(self, *statuses: str) -> list[dict]:
        marks = ", ".join("?" * len(statuses))
        return self._all(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY seq", statuses)

    def update_job(self, job_id: str, only_if_status: tuple[str, ...] | None = None, **fields) -> bool:
        """Set fields; with ``only_if_status`` the update happens only from those states (atomic)."""
        for key in _JSON_COLUMNS & fields.keys():
            fields[key] = _dump(fields[key])
        sql = "UPDATE jobs SET " + ", ".join(f"{k} = ?" for k in fields) + " WHERE id = ?"
        args = [*fields.values(), job_id]
        if only_if_status:
            sql += f" AND status IN ({', '.join('?' * len(only_if_status))})"
            args += list(only_if_status)
        return self._write(sql, args) > 0

    # --- events ---------------------------------------------------------------------------------

    def add_event(self, job_id: str, message: str, level: str = "info", type: str = "message", data=None) -> None:
        self._write(
            "INSERT INTO events (id, job_id, created_at, level, message, type, data) VALUES (?,?,?,?,?,?,?)",
            (
                new_id("ftevent-"),
                job_id,
                now(),
                level,
                message,
                type,
                _dump(data),
            ),
        )

    def list_events(self, job_id: str, after: str | None, limit: int) -> list[dict]:
        """Newest first, as OpenAI lists them; ``after`` is the last event id of the previous page."""
        sql, args = "SELECT * FROM events WHERE job_id = ?", [job_id]
        if after:
            sql += " AND seq < COALESCE((SELECT seq FROM events WHERE id = ? AND job_id = ?), -1)"
            args += [after, job_id]
        return self._all(sql + " ORDER BY seq DESC LIMIT ?", [*args, limit])

    # --- checkpoints ----------------------------------------------------------------------------

    def add_checkpoint(self, job_id: str, step: int, metrics: dict, path: str, model_name: str) -> bool:
        return (
            self._write(
                "INSERT OR IGNORE INTO checkpoints (id, job_id, step, created_at, metrics, path, model_name) "
                "VALUES (?,?,?,?,?,?,?)",
                (new_id("ftckpt-"), job_id, step, now(), _dump(metrics), path, model_name),
            )
            > 0
        )

    def list_checkpoints(self, job_id: str, after: str | None, limit: int) -> list[dict]:
        sql, args = "SELECT * FROM checkpoints WHERE job_id = ?", [job_id]
        if after:
            sql += " AND seq < COALESCE((SELECT seq FROM checkpoints WHERE id = ? AND job_id = ?), -1)"
            args += [after, job_id]
        return self._all(sql + " ORDER BY seq DESC LIMIT ?", [*args, limit])

    # --- fine-tuned models ----------------------------------------------------------------------

    def add_model(self, model_id: str, org_id: str, job_id: str, base: str, adapter_path: str) -> None:
        """Register a job's model. The same job registering again (a server killed while finishing it)
        rewrites its own row; a row of another job, in any organisation, is never replaced."""
        with self._connect() as db:
            written = db.execute(
                "INSERT INTO models VALUES (?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET "
                "base = excluded.base, adapter_path = excluded.adapter_path, created = excluded.created "
                "WHERE models.job_id = excluded.job_id AND models.org_id = excluded.org_id",
                (model_id, org_id, job_id, base, adapter_path, now()),
            ).rowcount
        if written == 0:
            raise ValueError(f"model id {model_id} is already taken by another job")

    def model(self, org_id: str, model_id: str) -> dict | None:
        return self._one("SELECT * FROM models WHERE id = ? AND org_id = ?", (model_id, org_id))

    def list_models(self, org_id: str) -> list[dict]:
        return self._all("SELECT * FROM models WHERE org_id = ? ORDER BY created", (org_id,))

    def delete_model(self, org_id: str, model_id: str) -> list[str]:
        """Delete the model unless fine-tuned models or active jobs train from it (they read its
        ``merged/`` folder); those dependants, none when it was deleted. One transaction: a job
        created meanwhile either sees the model or is counted."""
        marks = ", ".join("?" * len(ACTIVE))
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT adapter_path FROM models WHERE id = ? AND org_id = ?", (model_id, org_id))
                row = row.fetchone()
                merged = str(Path(row["adapter_path"]).parent / "merged") if row else None
                models = db.execute(
                    "SELECT id FROM models WHERE org_id = ? AND base = ? ORDER BY created, id", (org_id, merged)
                )
                jobs = db.execute(
                    f"SELECT id FROM jobs WHERE org_id = ? AND model = ? AND status IN ({marks}) ORDER BY seq",
                    (org_id, model_id, *ACTIVE),
                )
                dependants = [r["id"] for r in models] + [r["id"] for r in jobs]
                if not dependants:
                    db.execute("DELETE FROM models WHERE id = ? AND org_id = ?", (model_id, org_id))
            finally:
                db.execute("COMMIT")
        return dependants
