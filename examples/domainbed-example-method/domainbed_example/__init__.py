"""An example of a domain-generalization method kept in its own package (see README.md)."""
