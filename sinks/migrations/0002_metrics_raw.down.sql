DROP TABLE eventsink.metrics_raw;
