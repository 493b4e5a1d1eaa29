"""For services that publish events: the event models, the codec and the publisher.

Importing this package imports neither Faust nor the database driver.
"""

from schemas import AnalysisEvent, ChatEvent, MetricEvent, decode, encode
from streams.publish.publisher import Publisher

__all__ = ["AnalysisEvent", "ChatEvent", "MetricEvent", "Publisher", "decode", "encode"]
