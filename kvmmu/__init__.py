"""Generated from protos/ by scripts/protogen.py; do not edit."""
