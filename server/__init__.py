"""The gRPC shell around mmu/: validation, conversion, concurrency, serving.

Module map (imports flow downwards; only the last five know gRPC):
    security     TLS files, token digests, the loopback-only listen policy
    config       limits, host profile and overrides, state dir (ServerConfig)
    errors       the server's own errors, in the model's error tree
    names        resource names "vms/{vm}", "vms/{vm}/memslots/{slot}", ...
    pagination   AIP-158 page sizes and checked, opaque page tokens
    ops          operation records: every state change as small frozen data
    registry     VMs by id, registry lock and per-VM locks and conditions
    apply        apply(registry, op): the only way state changes (replayable)
    queries      read-only access: snapshots, dumps, event tails
    convert/     proto <-> model and request validation, per resource family
    limits       request checks against limits no model operation counts itself
    status       the one table: exceptions -> gRPC codes with google.rpc details
    interceptor  applies that table to every RPC once; logs and metrics
    metrics      optional Prometheus endpoint
    auth         TLS server credentials; the bearer-token interceptor (first of all)
    servicer     MmuService: validate, convert, apply or query, convert back
    app, main    create_server (health, reflection) and the kvmmu-server command
"""
