"""``rtchub bench``: load generator and reference-server comparison (issue 10)."""
