"""Kafka side of eventsink, by audience.

- `streams.worker`: the Faust worker runtime (app, pipeline, positioning, dedupe fast path, dead
  letters, web and telemetry); the only package that imports Faust.
- `streams.tools`: what operators and analysts run against topics and the database (reader,
  expected, tail, verify, lag, topics).
- `streams.cli`: the `eventsink` command line.
- `streams.dev`: developer tools (`eventsink run`, embedded services, load generation).
- `streams.publish`: for services that publish events; importable without Faust.
- `streams.aio`: a coroutine's result for synchronous callers (the CLI, the tools).
"""
