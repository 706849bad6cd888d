"""Dataset-level lineage steps. Each is plain Python (no DVC or Prefect import) and writes a report."""
