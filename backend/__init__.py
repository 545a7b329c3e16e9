"""Resident insurance collection backend (城乡居民两险集中征缴)."""
