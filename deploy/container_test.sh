#!/usr/bin/env bash
# Container smoke test (`make test-container`): build Dockerfile.cpu, serve a tiny exported model
# from it, and check what a user relies on: readiness, a prediction, /metrics, the HEALTHCHECK
# command, no torch in the image, a non-root user, a clean drain on SIGTERM, and the image size.
#
# Needs a container engine: ENGINE (default ../shared/tools/container/engine, a podman wrapper
# that behaves like `docker`; set ENGINE=docker elsewhere) and a base image BASE_IMAGE (default
# the engine's local python:3.11-slim image). Exits non-zero on the first failed check.
#
# EXTRAS=cpu,openvino-serve (`make test-container-openvino`) tests the OpenVINO variant: the model
# is exported with its static int8 IR (the host needs the openvino extra), and the server, on
# --engine auto, must have timed OpenVINO beside ONNX Runtime.
set -euo pipefail
cd "$(dirname "$0")/.."

ENGINE=${ENGINE:-../shared/tools/container/engine}
BASE_IMAGE=${BASE_IMAGE:-localhost/python:3.11-slim-local}
EXTRAS=${EXTRAS:-cpu}
case "$EXTRAS" in *openvino*) OPENVINO=1; DEFAULT_IMAGE=localhost/sentiment-cpu:test-openvino ;;
  *) OPENVINO=0; DEFAULT_IMAGE=localhost/sentiment-cpu:test ;; esac
IMAGE=${IMAGE:-$DEFAULT_IMAGE}
PY=${PY:-.venv/bin/python}
DRAIN_TIMEOUT_S=${DRAIN_TIMEOUT_S:-10}
NAME=sentiment-smoke-$$
WORK=$(mktemp -d /tmp/container-test.XXXXXX)
step_start=$SECONDS

say() { echo ">> test-container: $*"; }
fail() { echo "test-container: FAIL: $*" >&2; exit 1; }
cleanup() {
  if "$ENGINE" inspect "$NAME" >/dev/null 2>&1; then
    echo "---- container log (last 20 lines) ----"
    "$ENGINE" logs "$NAME" 2>&1 | tail -20 || true
    "$ENGINE" rm -f "$NAME" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
command -v "$ENGINE" >/dev/null || [ -x "$ENGINE" ] || fail "no container engine at $ENGINE (run ../shared/tools/container/setup.sh, or set ENGINE=docker)"

# Engines with podman underneath write OCI images by default, which drop HEALTHCHECK.
# Podman also schedules health checks through systemd, absent here: `healthcheck run` below runs
# the same command on demand instead.
format_args=()
health_args=()
if "$ENGINE" --version 2>/dev/null | grep -qi podman; then
  format_args=(--format docker)
  health_args=(--health-interval disable)
fi

say "building Dockerfile.cpu as $IMAGE (base $BASE_IMAGE, extras $EXTRAS)"
"$ENGINE" build "${format_args[@]}" -f Dockerfile.cpu --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg EXTRAS="$EXTRAS" \
  -t "$IMAGE" . \
  > "$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; fail "image build failed"; }
say "built in $((SECONDS - step_start)) s"

say "image checks: no torch/transformers, non-root user, sleep for the Kubernetes preStop hook"
"$ENGINE" run --rm --no-healthcheck --entrypoint python "$IMAGE" -c \
  "import importlib.util as u, sys; bad = [m for m in ('torch', 'transformers') if u.find_spec(m)]; print('  heavy modules present:', bad or 'none'); sys.exit(bool(bad))" \
  || fail "the serving image contains torch or transformers"
uid=$("$ENGINE" run --rm --no-healthcheck --entrypoint id "$IMAGE" -u)
[ "$uid" != "0" ] || fail "the image runs as root"
echo "  runs as uid $uid"
"$ENGINE" run --rm --no-healthcheck --entrypoint sleep "$IMAGE" 0 || fail "no sleep binary for the preStop hook"

say "exporting a tiny random model (real exporter, int8)"
"$PY" - "$WORK/checkpoint" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from tiny_model import build_tiny_checkpoint
build_tiny_checkpoint(Path(sys.argv[1]))
EOF
export_args=()
if [ "$OPENVINO" = 1 ]; then
  "$PY" -c "import openvino, nncf" 2>/dev/null \
    || fail "EXTRAS=$EXTRAS exports the static int8 IR: install the openvino extra here (pip install '.[openvino]')"
  export_args=(--openvino-int8 --openvino-calibration-samples 32)
fi
"$PY" -m exporter --checkpoint "$WORK/checkpoint" --output-dir "$WORK/model" --quantize int8 --no-calibrate \
  --eval-samples 16 --max-accuracy-drop 100 --min-agreement 0 "${export_args[@]}" > "$WORK/export.log" 2>&1 \
  || { tail -20 "$WORK/export.log"; fail "tiny model export failed"; }
chmod -R a+rX "$WORK/model"
PORT=$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
URL=http://127.0.0.1:$PORT

say "starting the container on $URL (model mounted read-only at /models/model, read-only root fs)"
# The engine uses the host's network, so the server listens on the host's loopback directly;
# with plain Docker, publish the port instead (-p $PORT:$PORT).
"$ENGINE" run -d --name "$NAME" "${health_args[@]}" --read-only --tmpfs /tmp \
  -v "$WORK/model:/models/model:ro" \
  -e SENTIMENT_HOST=127.0.0.1 -e SENTIMENT_PORT="$PORT" -e SENTIMENT_INTRA_OP_THREADS=1 \
  -e SENTIMENT_DRAIN_TIMEOUT_S="$DRAIN_TIMEOUT_S" \
  "$IMAGE" > /dev/null 2> "$WORK/run.err" || { cat "$WORK/run.err"; fail "the container did not start"; }

say "waiting for /readyz"
"$PY" - "$URL" <<'EOF' || fail "the server never became ready"
import sys, time, urllib.request
url = sys.argv[1]
deadline = time.monotonic() + 90
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
            if r.status == 200:
                print(f"  ready after {90 - (deadline - time.monotonic()):.1f} s")
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.5)
sys.exit(1)
EOF

say "GET /v1/model: the engine auto chose and what it timed"
"$PY" - "$URL" "$OPENVINO" <<'EOF' || fail "the engine check failed"
import json, sys, urllib.request
url, openvino = sys.argv[1], sys.argv[2] == "1"
with urllib.request.urlopen(url + "/v1/model", timeout=10) as r:
    engine = json.load(r)["engine"]
print(f"  engine {engine['name']}: {engine['reason']}")
if openvino:
    assert set(engine["seconds"]) == {"ort", "openvino"}, engine  # both ran in the image
else:
    assert engine["name"] == "ort" and "openvino" in engine["skipped"], engine
EOF

say "POST /v1/predict, GET /metrics, the playground and the API docs"
"$PY" - "$URL" <<'EOF' || fail "prediction or metrics check failed"
import json, sys, urllib.request
url = sys.argv[1]
review = "A charming, funny film with a wonderful cast. I would happily watch it again."
req = urllib.request.Request(url + "/v1/predict", data=json.dumps({"text": review}).encode(),
                             headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=10) as r:
    assert r.status == 200, r.status
    assert r.headers.get("X-Request-ID"), "no X-Request-ID header"
    body = json.load(r)
print("  answer:", json.dumps(body))
probs = body["probabilities"]
assert body["label"] in ("negative", "positive"), body
assert set(probs) == {"negative", "positive"}, probs
assert abs(sum(probs.values()) - 1) < 1e-4 and 0 <= body["score"] <= 1, body
assert body["score"] == max(probs.values()) and probs[body["label"]] == body["score"], body
bad = urllib.request.Request(url + "/v1/predict", data=b'{"text": ""}', headers={"Content-Type": "application/json"})
try:
    urllib.request.urlopen(bad, timeout=10)
    raise AssertionError("an empty text was accepted")
except urllib.error.HTTPError as e:
    err = json.load(e)
    assert e.code == 422 and "code" in err["error"], (e.code, err)
    print(f"  empty text -> {e.code} {err['error']['code']}")
with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
    text = r.read().decode()
for needle in ('sentiment_requests_total{code="200",endpoint="predict"} 1.0', "sentiment_model_info{",
               "sentiment_batch_size_count", "sentiment_request_duration_seconds_bucket"):
    assert needle in text, f"/metrics lacks {needle}"
print("  /metrics: counts the prediction, exports model info and histograms")
# Package data and the swagger-ui-bundle dependency: the pages and their assets are in the image.
for path, kind in (("/", "text/html"), ("/static/playground.js", "text/javascript"), ("/docs", "text/html"),
                   ("/docs/static/swagger-ui-bundle.js", "text/javascript")):
    with urllib.request.urlopen(url + path, timeout=10) as r:
        assert r.status == 200 and r.headers.get_content_type() == kind, (path, r.status, r.headers.get_content_type())
print("  the playground (GET /) and the API docs (GET /docs) are served from the image")
EOF

say "running the image's HEALTHCHECK command in the container"
if "$ENGINE" --version 2>/dev/null | grep -qi podman; then
  "$ENGINE" healthcheck run "$NAME" || fail "the HEALTHCHECK command reports unhealthy"
  echo "  healthy"
else
  echo "  skipped (docker runs it on its own schedule: see docker inspect)"
fi

say "SIGTERM under load: answered or refused with 503, never dropped; exit 0 within ${DRAIN_TIMEOUT_S} s"
"$PY" - "$URL" "$ENGINE" "$NAME" "$DRAIN_TIMEOUT_S" <<'EOF' || fail "the container did not drain cleanly"
import collections, json, subprocess, sys, threading, time, urllib.error, urllib.request
url, engine, name, drain_s = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
body = json.dumps({"texts": ["A charming, funny film with a wonderful cast. " * 20] * 16}).encode()
outcomes, lock, stop = collections.Counter(), threading.Lock(), threading.Event()

def client():
    while not stop.is_set():
        req = urllib.request.Request(url + "/v1/predict", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                outcome = str(r.status)
        except urllib.error.HTTPError as e:
            outcome = f"{e.code} {json.load(e)['error']['code']}"
        except (ConnectionRefusedError, urllib.error.URLError) as e:
            reason = getattr(e, "reason", e)
            # Refused: the listener is closed after the drain, nothing was accepted.
            outcome = "refused" if isinstance(reason, ConnectionRefusedError) else f"error: {reason!r}"
        except Exception as e:  # reset or closed mid-request: an accepted request was dropped
            outcome = f"error: {e!r}"
        with lock:
            outcomes[outcome] += 1
        if outcome == "refused":
            return

def served():
    # What the server itself answered, from its access log: (200s, 503s) on /v1/predict.
    log = subprocess.run([engine, "logs", name], capture_output=True, text=True).stdout + \
        subprocess.run([engine, "logs", name], capture_output=True, text=True).stderr
    lines = [json.loads(x) for x in log.splitlines() if x.startswith("{") and '"event":"access"' in x]
    lines = [x for x in lines if x.get("path") == "/v1/predict"]
    return sum(x["status"] == 200 for x in lines), sum(x["status"] == 503 for x in lines)

before = served()
threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]
for t in threads:
    t.start()
while outcomes["200"] < 20:
    time.sleep(0.02)
t0 = time.monotonic()
subprocess.run([engine, "kill", "--signal", "TERM", name], check=True, capture_output=True)
try:
    code = subprocess.run([engine, "wait", name], capture_output=True, text=True, timeout=drain_s + 10).stdout.strip()
except subprocess.TimeoutExpired:
    code = "still running"
elapsed = time.monotonic() - t0
stop.set()
for t in threads:
    t.join(timeout=35)
after = served()
answered = (after[0] - before[0], after[1] - before[1])
received = (outcomes["200"], sum(v for k, v in outcomes.items() if k.startswith("503 ")))
print(f"  exit status {code} after {elapsed:.2f} s; responses: {dict(outcomes)}")
print(f"  server answered (200, 503): {answered}; clients received: {received}")
# A connection still in the listen backlog when the listener closes is reset before the
# server read its request: that is a refusal, not a loss, as long as every request the
# server did read was answered and its answer arrived (the two counts agree).
resets = {k for k in outcomes if any(e in k for e in ("ConnectionResetError", "RemoteDisconnected", "BrokenPipeError"))}
lost = {k: v for k, v in outcomes.items()
        if k not in ("200", "503 shutting_down", "refused") and not (k in resets and answered == received)}
ok = code == "0" and elapsed <= drain_s and not lost
sys.exit(0 if ok else 1)
EOF
"$ENGINE" logs "$NAME" 2>&1 | grep '"draining' > /dev/null || fail "no drain message in the container log"
"$ENGINE" rm "$NAME" > /dev/null 2>&1

# The Kubernetes image: the model baked in, nothing mounted. Needs a model in artifacts/model
# (make demo or make export): the build context carries only that one.
if [ -f artifacts/model/model.onnx ]; then
  say "serve-bundled target with artifacts/model baked in"
  "$ENGINE" build "${format_args[@]}" -f Dockerfile.cpu --target serve-bundled \
    --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg MODEL_DIR=artifacts/model -t "$IMAGE-bundled" . \
    > "$WORK/build-bundled.log" 2>&1 || { tail -30 "$WORK/build-bundled.log"; fail "serve-bundled build failed"; }
  PORT=$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  "$ENGINE" run -d --name "$NAME" "${health_args[@]}" --read-only --tmpfs /tmp \
    -e SENTIMENT_HOST=127.0.0.1 -e SENTIMENT_PORT="$PORT" "$IMAGE-bundled" > /dev/null 2> "$WORK/run.err" \
    || { cat "$WORK/run.err"; fail "the bundled container did not start"; }
  "$PY" - "http://127.0.0.1:$PORT" <<'EOF' || fail "the bundled image did not serve its model"
import json, sys, time, urllib.request
url = sys.argv[1]
deadline = time.monotonic() + 120
while True:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
            if r.status == 200:
                break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit(1)
        time.sleep(0.5)
req = urllib.request.Request(url + "/v1/predict", headers={"Content-Type": "application/json"},
                             data=json.dumps({"text": "A wonderful, moving film. I loved it."}).encode())
with urllib.request.urlopen(req, timeout=10) as r:
    body = json.load(r)
print("  answer:", json.dumps(body))
assert body["label"] in ("negative", "positive")
EOF
  "$ENGINE" kill --signal TERM "$NAME" > /dev/null
  code=$(timeout $((DRAIN_TIMEOUT_S + 5)) "$ENGINE" wait "$NAME" || echo timeout)
  [ "$code" = "0" ] || fail "bundled container exit status after SIGTERM: $code"
  "$ENGINE" rm "$NAME" > /dev/null 2>&1
  bsize=$("$ENGINE" image inspect "$IMAGE-bundled" --format '{{.Size}}')
  echo "  bundled image: $((bsize / 1000000)) MB"
else
  say "serve-bundled target: skipped (no artifacts/model; make demo or make export creates one)"
fi

size=$("$ENGINE" image inspect "$IMAGE" --format '{{.Size}}')
say "image $IMAGE: $((size / 1000000)) MB (base $BASE_IMAGE)"
echo "test-container: PASS in $((SECONDS - step_start)) s"
