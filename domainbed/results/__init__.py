"""Results: model selection from the records, the tables, published results and the comparisons with them."""
