"""Receipts (缴费凭证): every payment the service applied, provable by whoever holds it."""
