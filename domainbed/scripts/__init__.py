"""Command-line tools: download, and the sweep / collect / ensemble and benchmark scripts."""
