"""The worker runtime: a Faust app whose agents batch each partition into one sink transaction.

Faust's private API is reached in `streams.worker.faust_internals` only.
"""
