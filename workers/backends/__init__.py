"""Alternative engines behind the same pool interfaces (`generate`, `prefill`, `decode`)."""
