"""IMDB sentiment inference server: aiohttp + ONNX Runtime with dynamic micro-batching (`python -m server`)."""
