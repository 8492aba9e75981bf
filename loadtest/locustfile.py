"""Locust users posting realistic reviews to POST /v1/predict.

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 [options below]

Each user waits a think time, then posts either one review (`{"text": ...}`, reported as
"/v1/predict [single]") or several (`{"texts": [...]}`, "/v1/predict [multi]"). Reviews are
IMDB test reviews when `<data-dir>/test.parquet` exists, else generated with the same
length distribution (see loadtest/texts.py). A response counts as a failure unless it is
a 200 whose body holds a label (single) or one prediction per text (multi).

Options (locust command-line flag, or the environment variable, or the default):
  --multi-fraction   LOADTEST_MULTI_FRACTION   0.1   share of requests carrying several texts
  --multi-min-texts  LOADTEST_MULTI_MIN_TEXTS  2     texts per multi-text request, at least
  --multi-max-texts  LOADTEST_MULTI_MAX_TEXTS  4     ... and at most
  --think-min-s      LOADTEST_THINK_MIN_S      1.0   think time between a user's requests, at least
  --think-max-s      LOADTEST_THINK_MAX_S      2.0   ... and at most (uniform)
  --data-dir         LOADTEST_DATA_DIR         data/imdb
  --review-pool      LOADTEST_REVIEW_POOL      2000  reviews loaded and cycled through
  --request-timeout-s LOADTEST_REQUEST_TIMEOUT_S 10  client timeout per request
  --summary-json     LOADTEST_SUMMARY_JSON     (none) final statistics as JSON, for the SLA gate
"""

from __future__ import annotations

import functools
import json
import random
import time

from locust import HttpUser, events, task

try:  # run as a file by locust (loadtest/ not a package on its path) or imported as a module
    from loadtest.texts import DEFAULT_DATA_DIR, load_texts
except ImportError:  # pragma: no cover - locust puts the file's own directory on sys.path
    # The same module under the name locust's path gives it: mypy sees the names defined twice.
    from texts import DEFAULT_DATA_DIR, load_texts  # type: ignore[no-redef]

ENDPOINT = "/v1/predict"


@events.init_command_line_parser.add_listener
def _add_options(parser) -> None:
    group = parser.add_argument_group("sentiment load test")
    group.add_argument(
        "--multi-fraction",
        type=float,
        default=0.1,
        env_var="LOADTEST_MULTI_FRACTION",
        help="share of requests carrying several texts",
    )
    group.add_argument("--multi-min-texts", type=int, default=2, env_var="LOADTEST_MULTI_MIN_TEXTS")
    group.add_argument("--multi-max-texts", type=int, default=4, env_var="LOADTEST_MULTI_MAX_TEXTS")
    group.add_argument("--think-min-s", type=float, default=1.0, env_var="LOADTEST_THINK_MIN_S")
    group.add_argument("--think-max-s", type=float, default=2.0, env_var="LOADTEST_THINK_MAX_S")
    group.add_argument("--data-dir", default=DEFAULT_DATA_DIR, env_var="LOADTEST_DATA_DIR")
    group.add_argument("--review-pool", type=int, default=2000, env_var="LOADTEST_REVIEW_POOL")
    group.add_argument("--request-timeout-s", type=float, default=10.0, env_var="LOADTEST_REQUEST_TIMEOUT_S")
    group.add_argument(
        "--summary-json",
        default="",
        env_var="LOADTEST_SUMMARY_JSON",
        help="write the final per-endpoint statistics here (python -m loadtest reads it)",
    )


@events.init.add_listener
def _prepare(environment, **_kwargs) -> None:
    """Check the options and load the reviews before the run-time clock starts."""
    o = environment.parsed_options
    if o is None:  # locust used as a library without its command line
        return
    problems = []
    if not 0.0 <= o.multi_fraction <= 1.0:
        problems.append(f"--multi-fraction must be within [0, 1], got {o.multi_fraction}")
    if not 1 <= o.multi_min_texts <= o.multi_max_texts:
        problems.append(
            f"need 1 <= --multi-min-texts <= --multi-max-texts, got {o.multi_min_texts}, {o.multi_max_texts}"
        )
    if not 0.0 <= o.think_min_s <= o.think_max_s:
        problems.append(f"need 0 <= --think-min-s <= --think-max-s, got {o.think_min_s}, {o.think_max_s}")
    if o.review_pool < 1:
        problems.append(f"--review-pool must be >= 1, got {o.review_pool}")
    if problems:
        raise SystemExit("error: " + "; ".join(problems))
    _pool(o.review_pool, o.data_dir)


@events.quitting.add_listener
def _write_summary(environment, **_kwargs) -> None:
    """Final statistics as JSON for the SLA gate.

    Locust's CSV is rewritten only once a second while the test runs, so it can miss the
    last second of requests; at `quitting` every request is counted.
    """
    path = getattr(environment.parsed_options, "summary_json", None)
    if not path:
        return
    entries = [*environment.stats.entries.values(), environment.stats.total]
    with open(path, "w") as fh:
        json.dump([_entry(e) for e in entries], fh, indent=1)


def _entry(e) -> dict:
    has = e.num_requests > 0
    return {
        "name": e.name,
        "method": e.method or "",
        "requests": e.num_requests,
        "failures": e.num_failures,
        "rps": e.total_rps,
        "p50_ms": e.get_response_time_percentile(0.50) if has else None,
        "p95_ms": e.get_response_time_percentile(0.95) if has else None,
        "p99_ms": e.get_response_time_percentile(0.99) if has else None,
        "max_ms": e.max_response_time if has else None,
    }


@functools.lru_cache(maxsize=4)
def _pool(n: int, data_dir: str) -> tuple[str, ...]:
    # Loaded once per process and shared by all users (reading the parquet file takes a second).
    texts, _source = load_texts(n, data_dir)
    return tuple(texts)


class ReviewUser(HttpUser):
    def wait_time(self) -> float:
        o = self.environment.parsed_options
        return self._rng.uniform(o.think_min_s, o.think_max_s)

    def on_start(self) -> None:
        o = self.environment.parsed_options
        self._rng = random.Random()
        self._texts = _pool(o.review_pool, o.data_dir)
        self._timeout = o.request_timeout_s
        # Start after a random part of one think time: users spawned within the same second would
        # otherwise all send their first request at once, a burst no real population of clients
        # makes, and one that the server's admission rightly meets with 503 overloaded.
        time.sleep(self._rng.uniform(0.0, o.think_max_s))  # locust's gevent makes this cooperative

    @task
    def predict(self) -> None:
        o = self.environment.parsed_options
        if self._rng.random() < o.multi_fraction:
            count = self._rng.randint(o.multi_min_texts, o.multi_max_texts)
            self._post({"texts": [self._rng.choice(self._texts) for _ in range(count)]}, f"{ENDPOINT} [multi]", count)
        else:
            self._post({"text": self._rng.choice(self._texts)}, f"{ENDPOINT} [single]", None)

    def _post(self, payload: dict, name: str, count: int | None) -> None:
        with self.client.post(ENDPOINT, json=payload, name=name, timeout=self._timeout, catch_response=True) as resp:
            if resp.status_code != 200:
                code = _error_code(resp)
                resp.failure(f"HTTP {resp.status_code}" + (f" {code}" if code else ""))
                return
            try:
                body = resp.json()
            except ValueError:
                body = None
            if not isinstance(body, dict):
                resp.failure("response is not a JSON object")
            elif count is None and "label" not in body:
                resp.failure("response has no label")
            elif count is not None and len(body.get("predictions", ())) != count:
                resp.failure(f"expected {count} predictions")


def _error_code(resp) -> str | None:
    try:
        return resp.json()["error"]["code"]
    except Exception:  # any non-conforming body: the status alone names the failure
        return None
