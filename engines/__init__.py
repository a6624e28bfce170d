"""The inference runtime (see DESIGN.md); filled in by the runtime issue."""
