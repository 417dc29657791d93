"""Typed Python client for the kvmmu gRPC API, and the `kvmmu` CLI."""
