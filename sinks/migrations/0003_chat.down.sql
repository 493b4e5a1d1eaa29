DROP TABLE eventsink.chat_messages;
DROP TABLE eventsink.chat_sessions;
