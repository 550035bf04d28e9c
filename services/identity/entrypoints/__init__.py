"""Thin translators: HTTP requests and Kafka events in, handler calls, answers out."""
