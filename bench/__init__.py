"""`make bench`: eventsink against a plain aiokafka loop and Quix Streams, on one loaded topic.

`python -m bench.run --help` for the options; results are appended to bench/RESULTS.md.
"""
