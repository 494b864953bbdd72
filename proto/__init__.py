"""The object model and wire APIs, generated from the .proto files beside this one.

Hand-written modules here are pure helpers over the generated messages that every side
(manager, agent, CLI) shares: time conversions, Swarm's defaults and the Docker Engine API JSON.
"""
