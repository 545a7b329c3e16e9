"""Publications (公示): a village's roster before collection and its paid list after, as XLSX."""
