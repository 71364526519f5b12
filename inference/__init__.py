"""inference package (filled in by later issues)."""
