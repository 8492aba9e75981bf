"""The one-command tour of the product (`python -m demo`, `make demo`): data, train, export,
serve, query, load test, stop."""
