"""explain package (filled in by later issues)."""
