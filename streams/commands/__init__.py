"""The subcommands of `eventsink`, one module per area."""
