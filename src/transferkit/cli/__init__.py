"""Thin typer commands over the library."""
