"""End to end with the tiny exported model: real ONNX Runtime, real server on a loopback port."""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, load, save

from core.modeldir import read_model_dir, read_serving_config
from core.tokenization import TextEncoder, TruncationConfig, pad_batch
from server.app import create_app
from server.config import ServerConfig
from server.encoder import ModelEncoder
from server.runner import OnnxRunner


def direct_probabilities(model_dir, texts: list[str]) -> np.ndarray:
    """What ONNX Runtime says for these texts as ONE batch, computed without the server's code."""
    serving = read_serving_config(model_dir)
    encoder = TextEncoder.from_file(model_dir / "tokenizer.json", TruncationConfig.from_dict(serving["truncation"]))
    ids, mask = pad_batch(encoder.encode_batch(texts), encoder.pad_id)
    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in {i.name for i in session.get_inputs()}:
        feed["token_type_ids"] = np.zeros_like(ids)
    logits = session.run(None, feed)[0].astype(np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def spread_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with its logits shifted by the text's length and mean token id.

    A random tiny model says ~0.5 for every text, and int8 dynamic quantization moves a
    text's output by more than that spread depending on its batch-mates; with this shift,
    texts get clearly different answers, so a mixed-up or misrouted result cannot pass.
    """
    out = tmp_path_factory.mktemp("spread") / "model"
    shutil.copytree(tiny_model_dir, out)
    model = load(str(out / "model.onnx"))
    graph = model.graph
    producer = next(n for n in graph.node if "logits" in n.output)
    producer.output[list(producer.output).index("logits")] = "logits_raw"
    graph.initializer.extend(
        [
            helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
            helper.make_tensor("per_token", TensorProto.FLOAT, [], [0.08]),
            helper.make_tensor("per_id", TensorProto.FLOAT, [], [3e-4]),
            helper.make_tensor("to_positive", TensorProto.FLOAT, [2], [0.0, 1.0]),
            helper.make_tensor("centre", TensorProto.FLOAT, [], [-3.0]),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
            helper.make_node("Cast", ["input_ids"], ["ids_f"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["mask_f", "axis1"], ["n_tok"], keepdims=1),
            helper.make_node("Mul", ["ids_f", "mask_f"], ["ids_masked"]),
            helper.make_node("ReduceSum", ["ids_masked", "axis1"], ["ids_sum"], keepdims=1),
            helper.make_node("Div", ["ids_sum", "n_tok"], ["ids_mean"]),
            helper.make_node("Mul", ["n_tok", "per_token"], ["a"]),
            helper.make_node("Mul", ["ids_mean", "per_id"], ["b"]),
            helper.make_node("Add", ["a", "b"], ["ab"]),
            helper.make_node("Add", ["ab", "centre"], ["shift"]),
            helper.make_node("Mul", ["shift", "to_positive"], ["shift2"]),
            helper.make_node("Add", ["logits_raw", "shift2"], ["logits"]),
        ]
    )
    save(model, str(out / "model.onnx"))
    return out


def corpus(reviews, n: int) -> list[str]:
    """n distinct texts of varied length built from the labelled reviews."""
    rng = np.random.default_rng(1)
    words = " ".join(t for t, _ in reviews).split()
    return [" ".join(rng.choice(words, size=int(rng.integers(2, 50)))) for _ in range(n)]


@pytest.fixture(scope="module")
def spread_runner(spread_model_dir):
    return OnnxRunner(spread_model_dir, intra_op_threads=1)


@pytest.fixture(scope="module")
def spread_encoder(spread_model_dir):
    return ModelEncoder(read_model_dir(spread_model_dir))


async def test_predictions_match_direct_onnxruntime(aiohttp_client, tiny_model_dir, reviews):
    """Pristine tiny model; requests one at a time, so each is one batch: results must be exact."""
    client = await aiohttp_client(create_app(ServerConfig(model_dir=tiny_model_dir, intra_op_threads=1)))
    texts = [t for t, _ in reviews]
    for text in texts[:4]:
        body = await (await client.post("/v1/predict", json={"text": text})).json()
        expected = direct_probabilities(tiny_model_dir, [text])[0]
        assert [body["probabilities"]["negative"], body["probabilities"]["positive"]] == pytest.approx(
            expected, abs=1e-6
        )
        assert body["label"] == ("positive" if expected[1] > expected[0] else "negative")
    body = await (await client.post("/v1/predict", json={"texts": texts})).json()
    expected = direct_probabilities(tiny_model_dir, texts)
    got = [[p["probabilities"]["negative"], p["probabilities"]["positive"]] for p in body["predictions"]]
    assert np.allclose(got, expected, atol=1e-6)
    info = await (await client.get("/v1/model")).json()
    assert info["quantization"] == "int8" and info["max_length"] == 64 and info["parity"]


async def test_spread_model_orders_and_truncates(
    aiohttp_client, spread_model_dir, spread_runner, spread_encoder, reviews
):
    client = await aiohttp_client(
        create_app(ServerConfig(model_dir=spread_model_dir), runner=spread_runner, encoder=spread_encoder)
    )
    texts = corpus(reviews, 20) + ["word " * 500]  # the last one is truncated to 64 tokens
    body = await (await client.post("/v1/predict", json={"texts": texts})).json()
    got = np.array([p["probabilities"]["positive"] for p in body["predictions"]])
    expected = direct_probabilities(spread_model_dir, texts)[:, 1]
    assert got == pytest.approx(expected, abs=1e-4)
    assert np.ptp(expected) > 0.5  # the texts really are told apart


async def test_200_concurrent_requests(aiohttp_client, spread_model_dir, spread_runner, spread_encoder, reviews):
    # 200 requests at once from a client in the server's own event loop is a burst past a 200 ms
    # budget (tests/server/test_overload.py covers that): here every one must be answered.
    client = await aiohttp_client(
        create_app(
            ServerConfig(model_dir=spread_model_dir, max_wait_ms=10, latency_budget_ms=0),
            runner=spread_runner,
            encoder=spread_encoder,
        )
    )
    texts = corpus(reviews, 200)
    expected = np.concatenate(
        [direct_probabilities(spread_model_dir, texts[i : i + 50])[:, 1] for i in range(0, 200, 50)]
    )

    async def one(text):
        resp = await client.post("/v1/predict", json={"text": text})
        return resp.status, await resp.json()

    answers = await asyncio.gather(*(one(t) for t in texts))
    assert [status for status, _ in answers] == [200] * 200
    got = np.array([body["probabilities"]["positive"] for _, body in answers])
    # int8 activation scales are per batch, so batch-mates move a result slightly (measured
    # < 1e-4); texts differ by ~2.5e-3 on average, so a misrouted answer fails this.
    assert got == pytest.approx(expected, abs=5e-4)
    metrics = await (await client.get("/metrics")).text()
    samples = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line.startswith("sentiment_batch_size"))
    batches, texts_run = float(samples["sentiment_batch_size_count"]), float(samples["sentiment_batch_size_sum"])
    assert texts_run == 200 and batches < 200
    assert float(samples['sentiment_batch_size_bucket{le="1.0"}']) < batches  # some batch had > 1 text
    assert "sentiment_padding_ratio_count" in metrics


class FailingRunner:
    """The real runner, except that a batch holding the marker text raises inside inference."""

    marker = "please fail this batch"

    def __init__(self, inner: OnnxRunner, encoder: ModelEncoder) -> None:
        self.inner = inner
        self.labels, self.max_length, self.info = inner.labels, inner.max_length, inner.info
        self.poison = encoder.encode([self.marker])[0].tobytes()

    def predict(self, seqs):
        if any(s.tobytes() == self.poison for s in seqs):
            raise RuntimeError("injected inference failure")
        return self.inner.predict(seqs)

    def warmup(self):
        self.inner.warmup()


async def test_failing_batch_then_recovery(aiohttp_client, spread_model_dir, spread_runner, spread_encoder, reviews):
    client = await aiohttp_client(
        create_app(
            ServerConfig(model_dir=spread_model_dir, max_batch_size=4, max_wait_ms=20),
            runner=FailingRunner(spread_runner, spread_encoder),
            encoder=spread_encoder,
        )
    )
    texts = corpus(reviews, 3)
    resp = await client.post("/v1/predict", json={"texts": [texts[0], FailingRunner.marker, texts[1]]})
    assert resp.status == 500
    assert (await resp.json())["error"]["code"] == "inference_failed"
    resp = await client.post("/v1/predict", json={"text": texts[2]})
    assert resp.status == 200
    expected = direct_probabilities(spread_model_dir, [texts[2]])[0, 1]
    assert (await resp.json())["probabilities"]["positive"] == pytest.approx(expected, abs=1e-5)
