"""What the benchmarks share: record files and provenance (records), round-robin timing (timing)."""
