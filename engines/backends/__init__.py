"""The runtime's backends, one module each behind the `Runner` interface (Polygraphy's layout)."""
