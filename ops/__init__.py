"""Running it: configuration, the CLI, metrics and health, embedded servers, deployment."""
