"""The gRPC shell around mmu/: validation, conversion, concurrency, serving."""
