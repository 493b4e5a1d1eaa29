"""Developer tools: `eventsink run` (make run), the embedded broker and database, load generation."""
