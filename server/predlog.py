"""The prediction log: a row per classified text in an SQLite file, written off the request path.

The request path only appends one entry per request to a bounded queue (`record`: a length
check and a deque append). One writer thread per process wakes every FLUSH_S, builds the rows
of everything queued and commits them in one transaction, then prunes the oldest rows past
--prediction-log-max-rows. A full queue drops the request's rows, counted in
sentiment_prediction_log_dropped_total; a failed write is logged and counted in
sentiment_prediction_log_errors_total, its rows are lost, and serving goes on. Serving never
waits on the disk.

Several processes (--processes N) write one file: the WAL journal lets readers (the monitor)
and the one writer at a time proceed together, and a busy timeout makes each process's writer
wait its turn on its own thread. Rowids come from one table, so pruning by id keeps the newest.

`SCHEMA` is the store's contract (README, "Prediction log and monitoring"): another store can
take SQLite's place by taking these rows; the monitor reads nothing else.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.config import ServerConfig
from server.metrics import Metrics

if TYPE_CHECKING:
    from server.inference import Answer

log = logging.getLogger("server.predlog")

SCHEMA_VERSION = 1  # PRAGMA user_version of a log this module wrote
SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id            INTEGER PRIMARY KEY,  -- insertion order: pruning drops the lowest
    ts            REAL    NOT NULL,     -- Unix time (s) the answer was sent
    request_id    TEXT    NOT NULL,     -- X-Request-ID
    position      INTEGER NOT NULL,     -- the text's index in its request (0 for {"text": ...})
    model_name    TEXT    NOT NULL,
    model_version TEXT    NOT NULL,
    label         TEXT,                 -- predicted label; NULL when the request failed
    score         REAL,                 -- the label's probability
    tokens        INTEGER,              -- ids the model saw, [CLS] and [SEP] included
    truncated     INTEGER,              -- 1 when the text was cut to max_length
    latency_ms    REAL    NOT NULL,     -- the request's, arrival to response
    batch_size    INTEGER,              -- the largest batch the request's texts ran in
    status        INTEGER NOT NULL,     -- HTTP status of the response
    text          TEXT                  -- only with --log-texts
);
CREATE INDEX IF NOT EXISTS predictions_ts ON predictions (ts);
"""
COLUMNS = (
    "ts",
    "request_id",
    "position",
    "model_name",
    "model_version",
    "label",
    "score",
    "tokens",
    "truncated",
    "latency_ms",
    "batch_size",
    "status",
    "text",
)
INSERT = f"INSERT INTO predictions ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
PRUNE = "DELETE FROM predictions WHERE id <= (SELECT MAX(id) FROM predictions) - ?"
FLUSH_S = 0.25  # rows reach the file within about this; a commit per wake-up, not per request
MAX_BATCH = 5000  # requests per transaction: a long backlog commits in pieces
BUSY_TIMEOUT_S = 10.0  # how long a writer waits for another process's transaction
ERROR_LOG_EVERY_S = 60.0  # a failing disk logs one line a minute, not one per flush
CLOSE_TIMEOUT_S = 15.0

# (ts, request id, status, latency s, answer or None, texts or None): one request, as queued.
Entry = tuple[float, str, int, float, "Answer | None", "Sequence[str] | None"]


class PredictionLogError(Exception):
    """The log cannot be opened (one-line message naming the file)."""


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if missing) a prediction log in WAL mode, with the schema in place.
    Raises PredictionLogError naming the file."""
    try:
        # check_same_thread off: opened at start-up, then used by the writer thread alone.
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL stays consistent; a crash may lose the last commit
            with conn:
                conn.executescript(SCHEMA)
                have = [row[1] for row in conn.execute("PRAGMA table_info(predictions)")]
                if have[1:] != list(COLUMNS):
                    raise PredictionLogError(f"--prediction-log {path}: its predictions table has other columns")
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            conn.close()
            raise
    except sqlite3.Error as exc:
        raise PredictionLogError(f"--prediction-log {path}: cannot open ({exc})") from None
    return conn


def check(path: Path) -> None:
    """At start-up, before any child process or model: the log opens (PredictionLogError)."""
    connect(path).close()


def rows(entry: Entry, model_name: str, model_version: str) -> list[tuple[Any, ...]]:
    """One queued request's rows (on the writer thread): a row per text, or one for a failure."""
    ts, request_id, status, latency_s, answer, texts = entry
    latency_ms = round(latency_s * 1000.0, 3)
    if answer is None:
        return [(ts, request_id, 0, model_name, model_version, None, None, None, None, latency_ms, None, status, None)]
    best, probs = answer.top
    labels = answer.labels
    n = len(best)
    tokens: Sequence[int | None] = answer.tokens or [None] * n
    truncated: Sequence[bool | None] = answer.truncated or [None] * n
    text: Sequence[str | None] = texts if texts is not None and len(texts) == n else [None] * n
    return [
        (
            ts,
            request_id,
            i,
            model_name,
            model_version,
            labels[best[i]],
            probs[i][best[i]],
            tokens[i],
            None if truncated[i] is None else int(truncated[i]),  # type: ignore[arg-type]
            latency_ms,
            answer.batch_size,
            status,
            text[i],
        )
        for i in range(n)
    ]


class PredictionLog:
    """`record` on the event loop; `start()` the writer, `close()` to flush and stop it."""

    def __init__(
        self,
        path: Path,
        model_name: str,
        model_version: str,
        metrics: Metrics,
        sample: float = 1.0,
        max_rows: int = 1_000_000,
        capacity: int = 10_000,
        log_texts: bool = False,
    ) -> None:
        """Opens the file now: PredictionLogError when it cannot be opened."""
        self.path = path
        self.model_name, self.model_version = model_name, model_version
        self.metrics = metrics
        self.sample = sample
        self.max_rows = max_rows
        self.capacity = capacity
        self.log_texts = log_texts
        self._conn = connect(path)
        self._queue: deque[Entry] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._random = random.random
        self._failed_since_logged = 0
        self._logged_at = -ERROR_LOG_EVERY_S

    @classmethod
    def from_config(cls, config: ServerConfig, info: dict[str, Any], metrics: Metrics) -> PredictionLog | None:
        """The log --prediction-log asks for (None when unset), for the model `info` describes."""
        if config.prediction_log is None:
            return None
        return cls(
            config.prediction_log,
            str(info.get("model_name", "unknown")),
            str(info.get("model_version", "unknown")),
            metrics,
            sample=config.prediction_log_sample,
            max_rows=config.prediction_log_max_rows,
            capacity=config.prediction_log_queue,
            log_texts=config.log_texts,
        )

    # -- the request path (event loop thread) --------------------------------------------

    def record(
        self,
        request_id: str,
        status: int,
        latency_s: float,
        answer: Answer | None,
        texts: Sequence[str] | None,
    ) -> None:
        """Queue one request's rows, or drop them when the queue is full. Never blocks."""
        if self.sample < 1.0 and self._random() >= self.sample:  # per request: all its texts or none
            return
        if len(self._queue) >= self.capacity:
            self.metrics.log_dropped.inc(len(answer.probabilities) if answer is not None else 1)
            return
        self._queue.append((time.time(), request_id, status, latency_s, answer, texts if self.log_texts else None))

    # -- the writer thread -----------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Write what is queued, stop the writer, close the file (blocking: call off the loop)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(CLOSE_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning(
                    "prediction log %s: writer still busy at shutdown; %d requests unwritten",
                    self.path,
                    len(self._queue),
                )
                return
        self._conn.close()

    def _run(self) -> None:
        while True:
            stopping = self._stop.wait(FLUSH_S)
            while self._queue:
                self.flush()
            if stopping:
                return

    def flush(self) -> int:
        """Write up to MAX_BATCH queued requests in one transaction; the rows written (writer thread)."""
        queue = self._queue
        entries = [queue.popleft() for _ in range(min(len(queue), MAX_BATCH))]
        if not entries:
            return 0
        try:
            batch = [row for entry in entries for row in rows(entry, self.model_name, self.model_version)]
            with self._conn:
                self._conn.executemany(INSERT, batch)
                self._conn.execute(PRUNE, (self.max_rows,))
        except Exception as exc:  # any error: the writer thread must outlive it, serving goes on
            self.metrics.log_errors.inc()
            self._log_failure(exc, len(entries))
            return 0
        self.metrics.log_rows.inc(len(batch))
        return len(batch)

    def _log_failure(self, exc: Exception, lost: int) -> None:
        self._failed_since_logged += 1
        now = time.monotonic()
        if now - self._logged_at < ERROR_LOG_EVERY_S:
            return
        log.error(
            "prediction log %s: write failed (%s: %s); %d rows lost, %d failed writes since the last such line; "
            "serving goes on",
            self.path,
            type(exc).__name__,
            exc,
            lost,
            self._failed_since_logged,
        )
        self._logged_at, self._failed_since_logged = now, 0
