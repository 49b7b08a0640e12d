"""Results: model selection from the records and the tables."""
