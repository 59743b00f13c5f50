"""Serve: the engine (micro-batching), cache, settings, metrics, OpenAPI (no Flask)."""
