"""OpenAPI 3 description of the HTTP interface (a test keeps it equal to the router's routes)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ERROR, description)


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
                "summary": "Served model: labels, quantization, max length, parity summary",
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
    },
    "components": {
        "schemas": {
            "SingleRequest": {
                "type": "object",
                "required": ["text"],
                "additionalProperties": False,
                "properties": {"text": {"type": "string", "minLength": 1}},
            },
            "BatchRequest": {
                "type": "object",
                "required": ["texts"],
                "additionalProperties": False,
                "properties": {"texts": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}}},
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
                    "batching": {"type": "object"},
                    "limits": {"type": "object"},
                },
            },
            "Status": {"type": "object", "properties": {"status": {"type": "string"}}},
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

_BODY = orjson.dumps(SPEC)


async def openapi_handler(request: web.Request) -> web.Response:
    return web.Response(body=_BODY, content_type="application/json")
