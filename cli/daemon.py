"""``minisw manager`` and ``minisw agent``: run one process in the foreground.

The manager and agent packages are imported inside the commands so that the plain CLI stays
light and never loads either.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Coroutine
from typing import Any

import click

from minisw.cli.units import parse_duration

__all__ = ["agent_command", "manager_command", "run_until_signalled", "setup_logging"]


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("pysyncobj").setLevel(logging.WARNING)


def run_until_signalled(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main``; SIGTERM and SIGINT cancel it so it can shut down cleanly."""

    async def runner() -> None:
        task = asyncio.ensure_future(main)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(runner())


@click.command("manager")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False), help="Where this manager keeps its state")
@click.option("--listen", required=True, help="Control API address HOST:PORT")
@click.option("--raft-listen", default="", help="Raft address HOST:PORT (default: the control port + 1)")
@click.option("--init", is_flag=True, help="Start a new cluster")
@click.option("--join", default="", help="Join the cluster of the manager at ADDR")
@click.option("--token", default="", help="The manager join token")
@click.option("--hostname", default=socket.gethostname(), show_default=True, help="Node name")
@click.option(
    "--cert-expiry", default="2160h", show_default=True, help="Node certificates' validity (with --init); 2m for tests"
)
@click.option(
    "--engine-api",
    "engine_api",
    multiple=True,
    help="Serve the Docker Engine API at HOST:PORT or unix:///PATH (repeatable; default: the control host, "
    "port + 3, with mutual TLS; none to disable)",
)
@click.option(
    "--engine-api-plaintext", is_flag=True, help="Serve the Engine API's TCP listeners without TLS (loopback only)"
)
@click.option("-v", "--verbose", is_flag=True)
def manager_command(
    data_dir: str,
    listen: str,
    raft_listen: str,
    init: bool,
    join: str,
    token: str,
    hostname: str,
    cert_expiry: str,
    engine_api: tuple[str, ...],
    engine_api_plaintext: bool,
    verbose: bool,
) -> None:
    """Run a manager in the foreground."""
    if init and join:
        raise click.UsageError("--init and --join exclude each other: start a new cluster or join one")
    if join and not token and not os.path.exists(os.path.join(data_dir, "tls", "cert.pem")):
        raise click.UsageError("--join needs --token (see `minisw join-token manager`)")
    expiry = parse_duration(cert_expiry, "--cert-expiry") / 1e9
    if expiry < 60:
        raise click.BadParameter(
            f'"{cert_expiry}" is too short: certificates must live at least 1m', param_hint="--cert-expiry"
        )
    setup_logging(verbose)
    from minisw.manager.errors import ManagerError
    from minisw.manager.main import build_manager
    from minisw.manager.node import JoinRefused, ManagerConfig

    config = ManagerConfig(
        data_dir=data_dir,
        listen=listen,
        raft_listen=raft_listen,
        init=init,
        join=join,
        token=token,
        hostname=hostname,
        cert_expiry=expiry,
        engine_api=engine_api,
        engine_api_plaintext=engine_api_plaintext,
    )
    try:
        run_until_signalled(build_manager(config).run())
    except JoinRefused as err:
        raise click.ClickException(f"join refused: {err}") from None
    except ManagerError as err:
        raise click.ClickException(str(err)) from None


@click.command("agent")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False), help="Where this agent keeps its state")
@click.option("--join", "join", required=True, help="Manager address(es) HOST:PORT[,HOST:PORT...]")
@click.option("--token", required=True, help="The worker (or manager) join token")
@click.option("--hostname", default=socket.gethostname(), show_default=True, help="Node name")
@click.option("--label", "labels", multiple=True, help="Node label key=value (repeatable)")
@click.option("--advertise", default="", help="This node's address (default: the one that reaches the manager)")
@click.option("--docker-host", default=None, help="Docker daemon URL (default: $DOCKER_HOST or the local socket)")
@click.option("--control-listen", default="", help="Answer control API calls here with Swarm's worker refusal")
@click.option(
    "--networking",
    type=click.Choice(["relay", "kernel"]),
    default="relay",
    show_default=True,
    help="kernel: overlay networks, VIPs and the ingress mesh in nftables (a node with its own network "
    "namespace and Docker daemon); relay: published ports through a userspace relay (nodes sharing one daemon)",
)
@click.option("-v", "--verbose", is_flag=True)
def agent_command(
    data_dir: str,
    join: str,
    token: str,
    hostname: str,
    labels: tuple[str, ...],
    advertise: str,
    docker_host: str | None,
    control_listen: str,
    networking: str,
    verbose: bool,
) -> None:
    """Run an agent (one per node) in the foreground."""
    parsed: dict[str, str] = {}
    for label in labels:
        key, sep, value = label.partition("=")
        if not key or not sep:
            raise click.BadParameter(f'invalid label "{label}": expected key=value', param_hint="--label")
        parsed[key] = value
    setup_logging(verbose)
    from minisw.agent.agent import Agent, AgentConfig, Refused

    config = AgentConfig(
        data_dir=data_dir,
        join=[a.strip() for a in join.split(",") if a.strip()],
        token=token,
        hostname=hostname,
        labels=parsed,
        advertise=advertise,
        docker_host=docker_host,
        control_listen=control_listen,
        networking=networking,
    )
    try:
        run_until_signalled(Agent(config).run())
    except Refused as err:
        raise click.ClickException(f"the cluster refused this node: {err}") from None
