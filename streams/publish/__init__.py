"""For services that publish events: the event models, the codec and the publisher.

Importing this package imports neither Faust nor the database driver. `Publisher` sends every
kind to its topic from the workers' settings (EVENTSINK_*_TOPIC); see `streams.publish.publisher`
for what `publish` returns and when the broker has the record. The models are the contract the
workers know and refuse any other field; a dict (`publish({...}, model=ChatEvent)`) carries
fields the contract does not know yet.
"""

from schemas import AnalysisEvent, ChatEvent, MetricEvent, decode, encode
from streams.publish.publisher import Publisher

__all__ = ["AnalysisEvent", "ChatEvent", "MetricEvent", "Publisher", "decode", "encode"]
