"""The `kvmmu` CLI commands, one module per area; `client.cli` assembles them."""
