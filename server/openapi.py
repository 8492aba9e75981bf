"""OpenAPI 3 description of the HTTP interface (a test keeps it equal to the router's routes).

SPEC is the fixed part; build_spec() adds the running server's limits (texts per request,
characters per text, body size), so GET /openapi.json and GET /docs state what this server refuses.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
from aiohttp import web

from server.config import ServerConfig
from server.state import CONFIG

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ERROR, description)


def _html(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_ASSET = {
    "description": "the file (text/html, text/css, text/javascript or image/png)",
    "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
}

_COMMON_HEADERS = {
    "X-Request-ID": {
        "description": "request id (echoed when the client sent a valid one)",
        "schema": {"type": "string"},
    },
    "X-Model-Name": {"description": "served model name", "schema": {"type": "string"}},
    "X-Model-Version": {"description": "served model version", "schema": {"type": "string"}},
}

SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "IMDB sentiment service",
        "version": "1.0.0",
        "description": "Binary sentiment of English movie reviews. Texts are batched dynamically; "
        "every response carries X-Request-ID, X-Model-Name and X-Model-Version.",
    },
    "paths": {
        "/v1/predict": {
            "post": {
                "operationId": "predict",
                "summary": 'Classify one text ({"text"}) or several ({"texts"}, answered in input order)',
                "description": "A request is admitted or refused whole. With a latency budget (server flag "
                "--latency-budget-ms, default 200), a request predicted to finish after it is refused at "
                "once with 503 overloaded and a Retry-After of the queue's drain time, and queued texts "
                "that can no longer meet it are dropped unrun (503 overloaded).",
                "parameters": [
                    {
                        "name": "X-Latency-Budget-Ms",
                        "in": "header",
                        "required": False,
                        "description": "a tighter latency budget for this request, in milliseconds (the "
                        "server's budget applies when it is lower; also honoured when the "
                        "server's is off)",
                        "schema": {"type": "number", "exclusiveMinimum": True, "minimum": 0},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    {"$ref": "#/components/schemas/SingleRequest"},
                                    {"$ref": "#/components/schemas/BatchRequest"},
                                ]
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        **_json(
                            {
                                "oneOf": [
                                    {"$ref": "#/components/schemas/SingleResponse"},
                                    {"$ref": "#/components/schemas/BatchResponse"},
                                ]
                            },
                            "predictions",
                        ),
                        "headers": _COMMON_HEADERS,
                    },
                    "400": _error(
                        "invalid_json | invalid_request (wrong types, unknown fields, a bad X-Latency-Budget-Ms)"
                    ),
                    "413": _error("body_too_large"),
                    "415": _error("unsupported_media_type (Content-Type must be application/json)"),
                    "422": _error("missing_text | empty_text | too_many_texts | text_too_long"),
                    "500": _error("inference_failed | internal_error"),
                    "503": {
                        **_error(
                            "overloaded (would finish after its latency budget; refused or dropped unrun) | "
                            "queue_full | shutting_down | not_ready (see Retry-After)"
                        ),
                        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                    },
                    "504": _error("deadline_exceeded (queued past the request timeout, never run)"),
                },
            }
        },
        "/v1/model": {
            "get": {
                "operationId": "model",
                "summary": "Served model: labels, quantization, max length, parity and calibration summary",
                "responses": {"200": _json({"$ref": "#/components/schemas/ModelInfo"}, "model description")},
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness: the process answers",
                "responses": {"200": _json({"$ref": "#/components/schemas/Status"}, "alive")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Readiness: model loaded and warmed up, not draining",
                "responses": {
                    "200": _json({"$ref": "#/components/schemas/Status"}, "ready"),
                    "503": _json({"$ref": "#/components/schemas/Status"}, "loading or draining"),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text exposition format)",
                "responses": {
                    "200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3 document")},
            }
        },
        "/v1/stats": {
            "get": {
                "operationId": "stats",
                "summary": "Live figures of the prediction requests, from the registry GET /metrics renders",
                "description": "Counters are totals since start (every process's under --processes N): a "
                "client computes rates, and a recent p95 from the bucket counts, between two polls.",
                "responses": {"200": _json({"$ref": "#/components/schemas/Stats"}, "live figures")},
            }
        },
        "/": {
            "get": {
                "operationId": "playground",
                "summary": "The playground: a web page to try predictions, see the model and live figures",
                "responses": {"200": _html("the playground page")},
            }
        },
        "/static/{name}": {
            "get": {
                "operationId": "static",
                "summary": "The playground's and the API docs' own scripts and styles",
                "parameters": [_NAME],
                "responses": {"200": _ASSET, "404": _error("not_found (not one of the shipped files)")},
            }
        },
        "/docs": {
            "get": {
                "operationId": "docs",
                "summary": "These API docs: Swagger UI over /openapi.json",
                "responses": {"200": _html("the Swagger UI page")},
            }
        },
        "/docs/static/{name}": {
            "get": {
                "operationId": "docs_static",
                "summary": "Swagger UI's files (from the swagger-ui-bundle package)",
                "parameters": [_NAME],
                "responses": {"200": _ASSET, "404": _error("not_found (not one of the served files)")},
            }
        },
    },
    "components": {
        "schemas": {
            # maxLength and maxItems are the running server's (build_spec).
            "Text": {
                "type": "string",
                "minLength": 1,
                # As server/schemas.py refuses a text that str.strip() leaves empty: 422 empty_text.
                "pattern": r"\S",
                "example": "A wonderful, moving film.",
            },
            "SingleRequest": {
                "type": "object",
                "required": ["text"],
                "additionalProperties": False,
                "properties": {"text": {"$ref": "#/components/schemas/Text"}},
            },
            "BatchRequest": {
                "type": "object",
                "required": ["texts"],
                "additionalProperties": False,
                "properties": {
                    "texts": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Text"}}
                },
            },
            "Prediction": {
                "type": "object",
                "required": ["label", "score", "probabilities"],
                "properties": {
                    "label": {"type": "string", "example": "positive"},
                    "score": {"type": "number", "description": "probability of `label`"},
                    "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
                },
            },
            "ModelRef": {"type": "object", "properties": {"name": {"type": "string"}, "version": {"type": "string"}}},
            "SingleResponse": {
                "allOf": [
                    {"$ref": "#/components/schemas/Prediction"},
                    {"type": "object", "properties": {"model": {"$ref": "#/components/schemas/ModelRef"}}},
                ]
            },
            "BatchResponse": {
                "type": "object",
                "required": ["predictions"],
                "properties": {
                    "predictions": {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}},
                    "model": {"$ref": "#/components/schemas/ModelRef"},
                },
            },
            "ModelInfo": {
                "type": "object",
                "properties": {
                    "model_name": {"type": "string"},
                    "model_version": {"type": "string"},
                    "labels": {"type": "array", "items": {"type": "string"}},
                    "quantization": {"type": "string"},
                    "max_length": {"type": "integer"},
                    "parity": {"type": "object"},
                    "calibration": {
                        "type": "object",
                        "description": "temperature: what logits are divided by before softmax (null: "
                        "uncalibrated); validation/test: the export's expected calibration error and "
                        "accuracy before and after it",
                    },
                    "robustness": {
                        "type": "object",
                        "nullable": True,
                        "description": "python -m exporter.robustness's summary (robustness.json in the model "
                        "directory, read at start-up; null where it was never run): the test sample's size and "
                        "accuracy, then each slice's name, group, size, accuracy, ci95, gap_points and flagged "
                        "(more than flag_points below the whole)",
                    },
                    "engine": {
                        "type": "object",
                        "description": "what runs the graph (--engine): requested, name (ort, ort-openvino, "
                        "openvino), reason, seconds (auto's timings of the same batches per engine), skipped "
                        "(engine -> why not: not installed, not checked by the export, failed to load or run), "
                        "then the engine's own facts (graph, providers or device, threads)",
                    },
                    "batching": {"type": "object"},
                    "limits": {"type": "object"},
                },
            },
            "Status": {"type": "object", "properties": {"status": {"type": "string"}}},
            "Stats": {
                "type": "object",
                "description": "since start, from the Prometheus registry: the prediction requests "
                "(POST /v1/predict) and their latency, the inference batches, and refusals (of any route)",
                "properties": {
                    "requests": {
                        "type": "object",
                        "description": "total, and by HTTP status code",
                        "properties": {
                            "total": {"type": "integer"},
                            "by_code": {"type": "object", "additionalProperties": {"type": "integer"}},
                        },
                    },
                    "latency_seconds": {
                        "type": "object",
                        "description": "sentiment_request_duration_seconds of predict requests: count, sum, "
                        "p50 and p95 since start (as histogram_quantile estimates them; null before the first), "
                        "and the cumulative bucket counts by upper bound (+Inf is `count`)",
                        "properties": {
                            "count": {"type": "integer"},
                            "sum": {"type": "number"},
                            "p50": {"type": "number", "nullable": True},
                            "p95": {"type": "number", "nullable": True},
                            "buckets": {
                                "type": "object",
                                "properties": {
                                    "le": {"type": "array", "items": {"type": "number"}},
                                    "cumulative": {"type": "array", "items": {"type": "integer"}},
                                },
                            },
                        },
                    },
                    "batches": {
                        "type": "object",
                        "description": "inference batches run, the texts in them, and their mean size",
                        "properties": {
                            "count": {"type": "integer"},
                            "texts": {"type": "integer"},
                            "mean_size": {"type": "number", "nullable": True},
                        },
                    },
                    "rejected": {
                        "type": "object",
                        "description": "sentiment_rejected_total: requests refused (any route), total and by reason",
                        "properties": {
                            "total": {"type": "integer"},
                            "by_reason": {"type": "object", "additionalProperties": {"type": "integer"}},
                        },
                    },
                    "inflight": {"type": "integer", "description": "prediction requests being handled now"},
                    "queue_depth": {"type": "integer", "description": "texts waiting for a batch now"},
                },
            },
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                    }
                },
            },
        }
    },
}


def build_spec(config: ServerConfig) -> dict[str, Any]:
    """SPEC with `config`'s limits: what this server refuses, in the schema and in words."""
    spec = copy.deepcopy(SPEC)
    schemas = spec["components"]["schemas"]
    longer = "truncated" if config.truncate else "refused with 422 text_too_long (--no-truncate)"
    schemas["Text"]["maxLength"] = config.max_text_chars
    schemas["Text"]["description"] = (
        f"a review: at most {config.max_text_chars} characters (--max-text-chars; 422 text_too_long beyond), "
        "not empty or only whitespace (422 empty_text). Texts longer than the model's max_length in word "
        f"pieces are {longer}."
    )
    texts = schemas["BatchRequest"]["properties"]["texts"]
    texts["maxItems"] = config.max_texts_per_request
    texts["description"] = (
        f"1 to {config.max_texts_per_request} texts (--max-texts-per-request; 422 too_many_texts beyond), "
        "answered in input order"
    )
    predict = spec["paths"]["/v1/predict"]["post"]
    budget = (
        f"With this server's latency budget of {config.latency_budget_ms:g} ms (--latency-budget-ms), a request"
        if config.latency_budget_ms
        else "The latency budget is off here (--latency-budget-ms 0); with one, a request"
    )
    predict["description"] = (
        f"A request is admitted or refused whole. {budget} predicted to finish after it is refused at once "
        "with 503 overloaded and a Retry-After of the queue's drain time, and queued texts that can no longer "
        f"meet it are dropped unrun (503 overloaded). Texts still queued {config.request_timeout_ms:g} ms "
        "after the request arrived (--request-timeout-ms) get 504 deadline_exceeded."
    )
    predict["requestBody"]["description"] = (
        f"at most {config.max_body_bytes} bytes (--max-body-bytes; 413 body_too_large beyond)"
    )
    if config.api_key_file is not None:  # server/auth.py guards predictions: Swagger UI's Authorize sends the key
        spec["components"]["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
        predict["security"] = [{"apiKey": []}]
        predict["responses"]["401"] = {
            **_error("unauthorized (no valid 'Authorization: Bearer <key>')"),
            "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
        }
    return spec


async def openapi_handler(request: web.Request) -> web.Response:
    # Built per request (a fraction of a millisecond): the document is fetched rarely.
    return web.Response(body=orjson.dumps(build_spec(request.app[CONFIG])), content_type="application/json")
