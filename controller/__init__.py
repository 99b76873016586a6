"""Builds the Serve application from a spec, runs the reconcile loop, the dashboard and the CLI."""
