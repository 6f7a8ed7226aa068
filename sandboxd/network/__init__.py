"""Per-user networks: settings, address management, state and the manager the daemon calls."""
