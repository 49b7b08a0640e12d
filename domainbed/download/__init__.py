"""Dataset download and verification: sources table (catalog), fetching with resume (fetch),
safe extraction (extract), per-dataset building (build), atomic install (install), and the
check against the published layout (verify). The command line is domainbed.scripts.download."""
