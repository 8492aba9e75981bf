"""Typed application state (web.AppKey) shared by the app factory, handlers and __main__."""

from __future__ import annotations

import asyncio
import itertools
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from server.batcher import MicroBatcher
from server.config import ServerConfig
from server.inference import Answer, InferenceService
from server.metrics import Metrics
from server.model import ServedModel
from server.predlog import PredictionLog

if TYPE_CHECKING:  # server.auth renders its refusals with server.errors, which reads this module
    from server.auth import ApiKeys


@dataclass
class ServerState:
    ready: bool = False  # model loaded and warmed up
    draining: bool = False  # SIGTERM received: refuse new work, finish accepted work
    inflight: int = 0  # prediction requests accepted and not yet answered
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    # Request ids: a random prefix per server process and a counter, 32 hex digits like a
    # uuid4's, unique across processes; uuid4 per request cost ~5% of the loop's time.
    id_prefix: str = field(default_factory=lambda: os.urandom(8).hex())
    id_counter: itertools.count[int] = field(default_factory=itertools.count)

    def next_request_id(self) -> str:
        return f"{self.id_prefix}{next(self.id_counter):016x}"


CONFIG = web.AppKey("config", ServerConfig)
METRICS = web.AppKey("metrics", Metrics)
STATE = web.AppKey("state", ServerState)
MODEL = web.AppKey("model", ServedModel)  # the encoder and the runner
BATCHER = web.AppKey("batcher", MicroBatcher)  # the service's, for tests and introspection
SERVICE = web.AppKey("service", InferenceService)
API_KEYS: web.AppKey[ApiKeys] = web.AppKey("api_keys")  # only with --api-key-file
PREDLOG = web.AppKey("predlog", PredictionLog)  # only with --prediction-log

# Per-request facts the access log and metrics middleware read after the handler ran.
REQUEST_ID = web.RequestKey("request_id", str)
TEXT_COUNT = web.RequestKey("text_count", int)
BATCH_SIZE = web.RequestKey("batch_size", int)
REJECT_REASON = web.RequestKey("reject_reason", str)
# What the prediction log records of a prediction request (set only while the log is on).
ANSWER = web.RequestKey("answer", Answer)
TEXTS = web.RequestKey("texts", list)
