"""`service create IMAGE COMMAND...`: flags stop at the image, as docker's do."""

from __future__ import annotations

from minisw.cli.service import create


def test_flags_after_the_image_belong_to_the_command() -> None:
    args = ["--name", "j", "minisw/web:1", "sh", "-c", "echo hi; exit 0", "--replicas", "3"]
    ctx = create.make_context("create", args)
    assert ctx.params["image"] == "minisw/web:1"
    assert ctx.params["command"] == ("sh", "-c", "echo hi; exit 0", "--replicas", "3")
    assert ctx.params["name"] == "j" and ctx.params["replicas"] is None
