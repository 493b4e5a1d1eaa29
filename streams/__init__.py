"""Kafka side of eventsink: the Faust app, its agents, the dedupe tables and the CLI.

Importing this package does not import Faust: `streams.publisher` is usable by services that
only publish events.
"""
