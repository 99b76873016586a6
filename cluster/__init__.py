"""The vocabulary every other package speaks: the cluster spec, telemetry records, the store."""
