"""serve step."""
