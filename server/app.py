"""create_server: the gRPC server with the MMU service, health and reflection.

The sync grpcio server with a thread pool; the model is protected by the
registry's locks. Graceful stop: health goes NOT_SERVING (and stays so for
the drain period, so load balancers notice), the server stops accepting,
followers of WatchEvents are woken and end, in-flight calls get `grace`
seconds to finish.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kvmmu.v1 import service_pb2, service_pb2_grpc
from server.auth import auth_interceptors, grpc_options, server_credentials
from server.config import ServerConfig
from server.durability.store import open_server_store
from server.interceptor import ServingInterceptor
from server.metrics import Metrics
from server.registry import Registry
from server.servicer import MmuServicer

SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["MmuService"].full_name
log = logging.getLogger("kvmmu.server")


class KvmmuServer:
    """The running pieces: the gRPC server, its health servicer and the VM registry."""

    def __init__(self, config: ServerConfig, *, metrics: bool = False) -> None:
        self.config = config
        self.registry = Registry(config.host(), config.limits)
        # Durable state (--state-dir): recovers the registry, then journals every change.
        self.store = open_server_store(config, self.registry)
        self.metrics = Metrics(self.registry) if metrics else None
        self.health = health.HealthServicer()
        limits = config.limits
        self.grpc = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=config.max_workers, thread_name_prefix="kvmmu-rpc"
            ),
            interceptors=[
                *auth_interceptors(config.security, self.metrics),
                ServingInterceptor(
                    self.metrics,
                    limits.max_message_bytes,
                    store_failure=self._store_failure if self.store is not None else None,
                ),
            ],
            options=grpc_options(limits),
            maximum_concurrent_rpcs=limits.max_inflight_rpcs,
        )
        service_pb2_grpc.add_MmuServiceServicer_to_server(
            MmuServicer(self.registry, config), self.grpc
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc
        )
        self._stopped = threading.Event()
        if self.store is not None:
            self.store.journal.on_failure = self._store_failed

    def _store_failure(self) -> BaseException | None:
        return self.store.journal.failure if self.store is not None else None

    def _store_failed(self, exc: BaseException) -> None:
        """Nothing more can be acknowledged: health says so, for a supervisor to restart us."""
        log.error("the durable store failed (%s): NOT_SERVING until restarted", exc)
        for service in ("", SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)

    def start(self) -> None:
        self.grpc.start()
        for service in ("", SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float | None = None, drain: float = 0.0) -> None:
        """Graceful stop; returns when every in-flight call ended or grace ran out."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        if drain > 0:
            time.sleep(drain)
        done = self.grpc.stop(self.config.grace_seconds if grace is None else grace)
        self.registry.close()
        done.wait()
        if self.store is not None:
            self.store.close()  # a final snapshot

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.grpc.wait_for_termination(timeout)


def create_server(
    address: str, *, config: ServerConfig | None = None, metrics: bool = False
) -> tuple[KvmmuServer, int]:
    """A started server bound to `address` (port 0: any free port) and its bound port."""
    server = KvmmuServer(config or ServerConfig(), metrics=metrics)
    credentials = server_credentials(server.config.security)
    if credentials is None:
        port = server.grpc.add_insecure_port(address)
    else:
        port = server.grpc.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    server.start()
    return server, port
