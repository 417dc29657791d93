"""Conversions between the model's values (mmu) and the kvmmu.v1 messages.

Shared by the server and by the client's offline commands, which must answer
exactly as the server would. Depends on mmu and the generated kvmmu.v1 only.
"""
