"""The locust SLA gate users run against a server (`python -m loadtest`); the benchmarks are bench/."""
