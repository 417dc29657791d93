"""Scenario files: operations and expectations, run offline or against a server."""
