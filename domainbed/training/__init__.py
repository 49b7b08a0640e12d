"""What runs a fold: the trainer, its evaluator, precision and extensions."""
