"""Optional Prometheus metrics: RPC counts and latencies, and each VM's model stats."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from server.registry import Registry, vm_info
from server.security import split_host

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0)


class VmStatsCollector(Collector):
    """kvmmu_vm_<stat>{vm="..."} gauges, read under each VM's lock at scrape time."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families: dict[str, GaugeMetricFamily] = {}
        for entry in self.registry.entries():
            with entry.lock:
                if entry.deleted:
                    continue
                info = vm_info(entry)
            for name, value in info.stats.items():
                family = families.get(name)
                if family is None:
                    family = GaugeMetricFamily(
                        f"kvmmu_vm_{name}", f"KVM stat {name} of each VM", labels=["vm"]
                    )
                    families[name] = family
                family.add_metric([info.vm_id], value)
        vms = GaugeMetricFamily("kvmmu_vms", "VMs held by the server")
        vms.add_metric([], len(self.registry))
        yield vms
        yield from families.values()


class Metrics:
    """The server's metrics in their own Prometheus registry."""

    def __init__(self, registry: Registry) -> None:
        self.prometheus = CollectorRegistry()
        self.requests = Counter(
            "kvmmu_rpc_requests",
            "RPCs handled, by method and status code",
            ["method", "code"],
            registry=self.prometheus,
        )
        self.latency = Histogram(
            "kvmmu_rpc_latency_seconds",
            "RPC handling time, by method",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.prometheus,
        )
        self.prometheus.register(VmStatsCollector(registry))

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics HTTP endpoint (see `parse_metrics_address`); the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.prometheus)
        bound: int = server.server_port
        return bound


def parse_metrics_address(address: str) -> tuple[str, int]:
    """(host, port) of HOST:PORT or [V6]:PORT; an empty host is 127.0.0.1.

    Raises ValueError saying what is wrong, so the flag can be refused at start.
    """
    host, sep, port_text = address.rpartition(":")
    if not sep:
        raise ValueError(f"{address!r} is not HOST:PORT")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ValueError(f"write an IPv6 address in brackets: [{host}]:{port_text}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number from 0 to 65535")
    return split_host(address) or "127.0.0.1", int(port_text)
