"""The ``minisw`` command group."""

from __future__ import annotations

import click

from minisw.cli.client import Client, resolve_host, resolve_tls_dir
from minisw.cli.daemon import agent_command, manager_command
from minisw.cli.dev import dev
from minisw.cli.network import network
from minisw.cli.node import node
from minisw.cli.service import service
from minisw.proto import control_pb2 as api

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-H", "--host", envvar=None, help="Manager address HOST:PORT (default: $MINISW_HOST, then the dev context)"
)
@click.option(
    "--tls-dir", default=None, help="Client certificate folder: ca.pem, cert.pem, key.pem (default: $MINISW_TLS_DIR)"
)
@click.pass_context
def cli(ctx: click.Context, host: str | None, tls_dir: str | None) -> None:
    """minisw: Docker Swarm's services on a few machines you can read."""
    clients: list[Client] = []

    def make() -> Client:
        if not clients:
            clients.append(Client(resolve_host(host), resolve_tls_dir(tls_dir)))
        return clients[0]

    ctx.obj = {"client": make}

    def close_all() -> None:
        for client in clients:
            client.close()

    ctx.call_on_close(close_all)


cli.add_command(service)
cli.add_command(node)
cli.add_command(network)
cli.add_command(manager_command)
cli.add_command(agent_command)
cli.add_command(dev)


@cli.command("join-token")
@click.argument("role", type=click.Choice(["worker", "manager"]))
@click.option("-q", "--quiet", is_flag=True, help="Only display token")
@click.option("--rotate", is_flag=True, help="Rotate join token (the old one stops working for new joins)")
@click.pass_context
def join_token(ctx: click.Context, role: str, quiet: bool, rotate: bool) -> None:
    """Manage join tokens."""
    client: Client = ctx.obj["client"]()
    if rotate:
        request = api.RotateJoinTokenRequest(worker=role == "worker", manager=role == "manager")
        client.call("RotateJoinToken", request)
        if not quiet:
            click.echo(f"Successfully rotated {role} join token.\n")
    cluster = client.call("GetCluster", api.Empty()).cluster
    token = getattr(cluster.join_tokens, role)
    if quiet:
        click.echo(token)
        return
    info = client.call("Info", api.Empty())
    command = "agent" if role == "worker" else "manager"
    click.echo(f"To add a {role} to this swarm, run the following command:\n")
    click.echo(
        f"    minisw {command} --join {info.leader_addr or client.host} --token {token} --data-dir DIR"
        + (" --listen HOST:PORT" if role == "manager" else "")
    )
    click.echo()


@cli.command()
@click.pass_context
def info(ctx: click.Context) -> None:
    """Display cluster-wide information."""
    client: Client = ctx.obj["client"]()
    i = client.call("Info", api.Empty())
    click.echo("Swarm: active")
    click.echo(f" NodeID: {i.node_id}")
    click.echo(" Is Manager: true")
    click.echo(f" ClusterID: {i.cluster_id}")
    click.echo(f" Managers: {i.managers} ({i.reachable_managers} reachable)")
    click.echo(f" Nodes: {i.nodes}")
    click.echo(f" Leader: {i.leader_addr}")
    click.echo(" Raft:")
    click.echo(f"  Term: {i.raft_term}")
    click.echo(f"  Commit index: {i.raft_commit_index}")


def main() -> None:
    cli(prog_name="minisw")
