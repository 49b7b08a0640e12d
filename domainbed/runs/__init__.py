"""What owns a run on disk: its directory, records, checkpoints and saved models."""
