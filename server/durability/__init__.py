"""Durable state: a journal of operation records and VM snapshots in a state directory.

    config      DurabilityConfig (level, snapshot triggers, discard flag); import-light
    cli         the kvmmu-server flags that build it
    layout      the directory: format file, lock, SQLite schema
    codec       journal records as checksummed bytes
    journal     append in apply order, group commit
    snapshots   snapshot files and their index
    checkpoint  snapshot changed VMs, truncate the journal behind them
    recovery    load snapshots, replay the tail, detect damage
    store       open (initialise or recover), serve, close

`server.durability.store.open_store` is the entry point. This package imports
nothing heavy at its top, because `server.config` imports its config.
"""
