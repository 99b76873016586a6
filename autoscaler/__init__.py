"""Per-pool replica decisions and the power-aware cross-site rebalancer (pure policies)."""
