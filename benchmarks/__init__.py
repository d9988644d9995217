"""kanjax's measurements, run as modules from the repository root (`python -m benchmarks.<...>`):
`perf/` times and sizes the library (tables in results/perf/), `studies/<name>/` are the
experiments (driver, plan, report; records and reports in results/<name>/), `common/` what they
share (records, timing)."""
