"""One module per view; each reads AppState and asks the engine for work."""
