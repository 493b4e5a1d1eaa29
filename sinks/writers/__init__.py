"""One row writer per event kind (metric, chat, analysis), and what they share: the staging table
generated from a model's columns, and the ownership rules of sessions and analyses."""
