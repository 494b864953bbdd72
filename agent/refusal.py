"""On a worker, the control API answers every call with Swarm's refusal."""

from __future__ import annotations

from typing import Any

import grpc

from minisw.proto import control_pb2
from minisw.proto.pki import WORKER_REFUSAL

__all__ = ["WORKER_REFUSAL", "refusal_handler"]


def refusal_handler() -> grpc.GenericRpcHandler:
    service = control_pb2.DESCRIPTOR.services_by_name["Control"]

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, WORKER_REFUSAL)

    handlers = {method.name: grpc.unary_unary_rpc_method_handler(refuse) for method in service.methods}
    return grpc.method_handlers_generic_handler(service.full_name, handlers)
