"""What operators and analysts run against the topics and the database, without joining the
workers' consumer group: reader, tail, verify, lag, topics, dlq, backup."""
