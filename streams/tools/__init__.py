"""What operators and analysts run against the topics and the database, without joining the
workers' consumer group: reader (the one group-less Kafka reader), expected (what the database
must hold for a topic's records), tail, verify, lag, topics."""
