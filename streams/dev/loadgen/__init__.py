"""Load generation for the three kinds, keeping the exact account of what was sent (not of what
the database must hold: `streams.tools.expected` computes that from the topics)."""
