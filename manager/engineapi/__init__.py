"""The Docker Engine API on a manager: what ``docker service``/``node``/``swarm`` and docker-py use."""

from minisw.manager.engineapi.server import (
    ENGINE_API_PORT_OFFSET,
    EngineAPIServer,
    Listener,
    default_engine_api_addr,
    parse_listener,
)

__all__ = ["ENGINE_API_PORT_OFFSET", "EngineAPIServer", "Listener", "default_engine_api_addr", "parse_listener"]
