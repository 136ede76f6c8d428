"""What every view shares: plot helpers for figures and the latest-request-wins job helper."""
