// The playground: a client of the public API, like any other. No framework, no build step.
// URLs are relative to the page, so the page also works under a proxy's path prefix.
"use strict";

(function () {
  var KEY_STORAGE = "sentiment-api-key";
  var POLL_MS = 2000;

  function $(id) {
    return document.getElementById(id);
  }

  function show(el, visible) {
    el.hidden = !visible;
  }

  // ---- API key: asked for on a 401, kept for this tab only ----

  function storedKey() {
    try {
      return window.sessionStorage.getItem(KEY_STORAGE) || "";
    } catch (e) {
      return ""; // storage disabled: the key cannot be kept
    }
  }

  function storeKey(key) {
    try {
      if (key) {
        window.sessionStorage.setItem(KEY_STORAGE, key);
      } else {
        window.sessionStorage.removeItem(KEY_STORAGE);
      }
    } catch (e) {
      /* storage disabled */
    }
    show($("key-status"), Boolean(key));
  }

  // ---- errors, shown as the API words them ----

  // The API's {"error": {"code", "message"}} when the body is one; else the HTTP status and the
  // start of the body (a proxy's page, say).
  function apiError(status, text) {
    try {
      var body = JSON.parse(text);
      if (body && body.error && typeof body.error.code === "string") {
        return { code: body.error.code, message: String(body.error.message || "") };
      }
    } catch (e) {
      /* not JSON */
    }
    return { code: "HTTP " + status, message: text.slice(0, 300) };
  }

  function showError(err) {
    $("error-code").textContent = err ? err.code : "";
    $("error-message").textContent = err ? err.message : "";
    show($("error"), Boolean(err));
  }

  // ---- predictions ----

  function requestBody(value) {
    var lines = value.split("\n").filter(function (line) {
      return line.trim() !== "";
    });
    // A box of blank lines goes as it is: the API's own answer (422 empty_text) is shown.
    if (lines.length > 1) {
      return { body: { texts: lines }, texts: lines };
    }
    var text = lines.length === 1 ? lines[0] : value;
    return { body: { text: text }, texts: [text] };
  }

  function renderResults(texts, answer) {
    var list = $("results");
    list.textContent = "";
    var predictions = answer.predictions || [answer];
    predictions.forEach(function (p, i) {
      var item = document.createElement("li");
      item.className = "result";
      item.dataset.label = p.label;
      var label = document.createElement("span");
      label.className = "label";
      label.textContent = p.label;
      var bar = document.createElement("span");
      bar.className = "bar";
      bar.setAttribute("role", "meter");
      bar.setAttribute("aria-valuemin", "0");
      bar.setAttribute("aria-valuemax", "1");
      bar.setAttribute("aria-valuenow", String(p.score));
      var fill = document.createElement("span");
      fill.className = "fill";
      fill.style.width = (100 * p.score).toFixed(1) + "%";
      bar.appendChild(fill);
      var score = document.createElement("span");
      score.className = "score";
      score.textContent = p.score.toFixed(3);
      var text = document.createElement("span");
      text.className = "text";
      text.textContent = texts[i] || "";
      item.append(label, bar, score, text);
      list.appendChild(item);
    });
  }

  var busy = false;

  function classify() {
    if (busy) {
      return;
    }
    busy = true;
    $("classify").disabled = true;
    var request = requestBody($("review").value);
    var headers = { "Content-Type": "application/json" };
    var key = storedKey();
    if (key) {
      headers.Authorization = "Bearer " + key;
    }
    var started = performance.now();
    fetch("v1/predict", { method: "POST", headers: headers, body: JSON.stringify(request.body) })
      .then(function (resp) {
        return resp.text().then(function (text) {
          var elapsed = performance.now() - started;
          $("status").textContent = String(resp.status);
          $("latency").textContent = elapsed.toFixed(1);
          $("request-id").textContent = resp.headers.get("X-Request-ID") || "(none)";
          show($("request-meta"), true);
          if (resp.ok) {
            showError(null);
            show($("key-form"), false);
            renderResults(request.texts, JSON.parse(text));
            return;
          }
          $("results").textContent = "";
          showError(apiError(resp.status, text));
          if (resp.status === 401) {
            askForKey(Boolean(key));
          }
        });
      })
      .catch(function (e) {
        show($("request-meta"), false);
        showError({ code: "network_error", message: String(e) });
      })
      .finally(function () {
        busy = false;
        $("classify").disabled = false;
        pollSoon();
      });
  }

  function askForKey(keyWasSent) {
    if (keyWasSent) {
      storeKey(""); // refused: a wrong or revoked key is not sent again
    }
    $("key-hint").textContent = keyWasSent
      ? "The server refused this tab's API key. Enter another to retry."
      : "This server wants an API key for predictions.";
    show($("key-form"), true);
    $("api-key").focus();
  }

  function useKey(event) {
    event.preventDefault();
    var key = $("api-key").value.trim();
    if (!key) {
      return;
    }
    storeKey(key);
    $("api-key").value = "";
    show($("key-form"), false);
    classify();
  }

  // ---- the model view ----

  function pct(x, digits) {
    return typeof x === "number" ? (100 * x).toFixed(digits === undefined ? 2 : digits) + "%" : "n/a";
  }

  function truncationText(info) {
    var t = info.truncation || {};
    var how = t.strategy || "n/a";
    if (t.strategy === "head+tail" && t.head_tokens !== undefined) {
      how += " (first " + t.head_tokens + " word pieces and the rest from the end)";
    }
    var max = t.max_length || info.max_length;
    var longer = info.truncate === false ? "refused (422 text_too_long)" : "truncated";
    return how + "; at most " + max + " word pieces, longer texts " + longer;
  }

  function parityText(parity) {
    if (!parity || parity.label_agreement === undefined) {
      return "n/a";
    }
    return (
      "label agreement " + pct(parity.label_agreement) + " with PyTorch on " + parity.samples + " reviews" +
      (parity.source ? " (" + parity.source + ")" : "")
    );
  }

  function accuracyText(parity) {
    if (!parity || parity.onnx_accuracy == null) {  // absent, or null: parity ran on random text
      return "n/a";
    }
    var drop = typeof parity.accuracy_drop_points === "number" ? parity.accuracy_drop_points.toFixed(2) : "n/a";
    return "ONNX " + pct(parity.onnx_accuracy) + ", PyTorch " + pct(parity.pytorch_accuracy) + " (drop " + drop + " points)";
  }

  // robustness.json's summary: a row per slice, the ones more than flag_points below the whole marked.
  function renderRobustness(summary) {
    var rows = summary && Array.isArray(summary.slices) ? summary.slices : [];
    var body = $("robustness-rows");
    body.textContent = "";
    rows.forEach(function (s) {
      var tr = document.createElement("tr");
      tr.dataset.slice = s.name;
      tr.className = s.flagged ? "flagged" : "";
      var gap = typeof s.gap_points === "number" ? (s.gap_points > 0 ? "+" : "") + s.gap_points.toFixed(1) : "n/a";
      var cells = [
        s.name,
        String(s.size),
        pct(s.accuracy, 1),
        s.ci95 ? pct(s.ci95[0], 1) + "–" + pct(s.ci95[1], 1) : "n/a",
        gap + (s.flagged ? " ⚠" : ""),
      ];
      cells.forEach(function (text, i) {
        var cell = document.createElement(i === 0 ? "th" : "td");
        cell.textContent = text;
        tr.appendChild(cell);
      });
      body.appendChild(tr);
    });
    $("robustness-note").textContent = rows.length
      ? "Served model, " + summary.samples + " test reviews: " + pct(summary.accuracy, 1) + "; ⚠ more than " +
        summary.flag_points + " points below that (a perturbation: below the same reviews unperturbed)."
      : "";
    show($("model-robustness"), rows.length > 0);
  }

  function renderModel(info) {
    var limits = info.limits || {};
    var facts = [
      ["name", info.model_name],
      ["version", info.model_version],
      ["quantization", info.quantization + (info.optimization ? ", graph " + info.optimization : "")],
      ["target", info.target + (info.providers ? " (" + info.providers.join(", ") + ")" : "")],
      ["labels", (info.labels || []).join(", ")],
      ["truncation", truncationText(info)],
      ["parity", parityText(info.parity)],
      ["accuracy", accuracyText(info.parity)],
      [
        "limits",
        limits.max_texts_per_request + " texts per request, " + limits.max_text_chars + " characters per text",
      ],
    ];
    var dl = $("model-facts");
    dl.textContent = "";
    facts.forEach(function (fact) {
      var dt = document.createElement("dt");
      dt.textContent = fact[0];
      var dd = document.createElement("dd");
      dd.dataset.fact = fact[0];
      dd.textContent = String(fact[1]);
      dl.append(dt, dd);
    });
    renderRobustness(info.robustness);
  }

  function loadModel() {
    fetch("v1/model")
      .then(function (resp) {
        return resp.text().then(function (text) {
          if (!resp.ok) {
            throw apiError(resp.status, text);
          }
          renderModel(JSON.parse(text));
        });
      })
      .catch(function (err) {
        var dl = $("model-facts");
        dl.textContent = "";
        var dt = document.createElement("dt");
        dt.textContent = err.code || "error";
        var dd = document.createElement("dd");
        dd.textContent = err.message || String(err);
        dl.append(dt, dd);
        window.setTimeout(loadModel, 5000); // still loading, say: try again
      });
  }

  // ---- the live view ----

  // Prometheus' histogram_quantile(): linear within the bucket the rank falls in, the first
  // bucket starting at 0, the highest finite bound past the last. server/stats.py's quantile().
  function quantile(q, bounds, cumulative, count) {
    if (!(count > 0) || bounds.length === 0) {
      return null;
    }
    var rank = q * count;
    var lower = 0;
    var below = 0;
    for (var i = 0; i < bounds.length; i++) {
      if (cumulative[i] >= rank) {
        return lower + ((bounds[i] - lower) * (rank - below)) / (cumulative[i] - below);
      }
      lower = bounds[i];
      below = cumulative[i];
    }
    return bounds[bounds.length - 1];
  }

  // The figures between two polls: counters' differences, as Prometheus' rate() takes them.
  function windowed(prev, cur, seconds) {
    var p = prev.latency_seconds;
    var c = cur.latency_seconds;
    // Before the first predict request the histogram has no buckets at all: all zeros.
    var sameBounds = p.buckets.le.length === 0 || p.buckets.le.join() === c.buckets.le.join();
    var deltas = c.buckets.cumulative.map(function (n, i) {
      return n - (p.buckets.cumulative[i] || 0);
    });
    var batches = cur.batches.count - prev.batches.count;
    return {
      rate: (cur.requests.total - prev.requests.total) / seconds,
      p95: sameBounds ? quantile(0.95, c.buckets.le, deltas, c.count - p.count) : null,
      batch: batches > 0 ? (cur.batches.texts - prev.batches.texts) / batches : null,
      refused: cur.rejected.total - prev.rejected.total,
    };
  }

  function ms(seconds) {
    return seconds === null || seconds === undefined ? "–" : (1000 * seconds).toFixed(1) + " ms";
  }

  function num(x, digits) {
    return x === null || x === undefined ? "–" : x.toFixed(digits);
  }

  function reasons(byReason) {
    var parts = Object.keys(byReason)
      .filter(function (r) {
        return byReason[r] > 0;
      })
      .map(function (r) {
        return r + " " + byReason[r];
      });
    return parts.length ? " (" + parts.join(", ") + ")" : "";
  }

  function renderLive(cur, win) {
    $("live-total").textContent = String(cur.requests.total);
    $("live-p95-total").textContent = ms(cur.latency_seconds.p95);
    $("live-batch-total").textContent = num(cur.batches.mean_size, 2);
    $("live-refused-total").textContent = cur.rejected.total + reasons(cur.rejected.by_reason);
    $("live-rate").textContent = win ? num(win.rate, 1) + " /s" : "–";
    $("live-p95-window").textContent = win ? ms(win.p95) : "–";
    $("live-batch-window").textContent = win ? num(win.batch, 2) : "–";
    $("live-refused-window").textContent = win ? String(win.refused) : "–";
    $("live-now").textContent = cur.inflight + " in flight, " + cur.queue_depth + " texts queued";
    $("live-updated").textContent = "updated " + new Date().toLocaleTimeString();
  }

  var last = null; // {stats, at}: the previous poll
  var timer = null;

  function poll() {
    timer = null;
    if (document.hidden) {
      return; // resumed by visibilitychange
    }
    fetch("v1/stats")
      .then(function (resp) {
        return resp.text().then(function (text) {
          if (!resp.ok) {
            throw apiError(resp.status, text);
          }
          var cur = JSON.parse(text);
          var at = performance.now();
          // A restarted server's counters start again from 0: no interval across that.
          var win =
            last && cur.requests.total >= last.stats.requests.total && at > last.at
              ? windowed(last.stats, cur, (at - last.at) / 1000)
              : null;
          renderLive(cur, win);
          last = { stats: cur, at: at };
          show($("live-error"), false);
        });
      })
      .catch(function (err) {
        $("live-error").textContent = (err.code || "error") + ": " + (err.message || String(err));
        show($("live-error"), true);
      })
      .finally(function () {
        if (timer === null) {
          timer = window.setTimeout(poll, POLL_MS);
        }
      });
  }

  // After a prediction: the next poll in a moment, not up to 2 s later.
  function pollSoon() {
    if (timer !== null) {
      window.clearTimeout(timer);
      timer = window.setTimeout(poll, 250);
    }
  }

  // ---- wiring ----

  function start() {
    var examples = document.querySelectorAll(".example[data-review]");
    examples.forEach(function (button) {
      button.addEventListener("click", function () {
        $("review").value = button.dataset.review;
      });
    });
    $("all-examples").addEventListener("click", function () {
      $("review").value = Array.prototype.map
        .call(examples, function (b) {
          return b.dataset.review;
        })
        .join("\n");
    });
    $("classify").addEventListener("click", classify);
    $("review").addEventListener("keydown", function (event) {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        classify();
      }
    });
    $("key-form").addEventListener("submit", useKey);
    $("forget-key").addEventListener("click", function () {
      storeKey("");
    });
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden && timer === null) {
        poll();
      }
    });
    show($("key-status"), Boolean(storedKey()));
    loadModel();
    poll();
  }

  // For the browser test: the pure functions, to hold them to server/stats.py's.
  window.Playground = { quantile: quantile, windowed: windowed, requestBody: requestBody };
  start();
})();
