"""Pictures of SPTEs and VMs: SVG bit-field diagrams and a self-contained HTML report."""
