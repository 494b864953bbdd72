"""Executors: how a task becomes a container. Only ``docker_adapter`` imports the Docker SDK."""
