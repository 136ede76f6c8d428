"""The Qt shell: main window, AppState, the engine bridge (see ../shared/ARCHITECTURE.md)."""
