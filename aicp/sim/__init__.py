"""The simulator: the aicp routing core driven under SimPy time (see docs/SIMULATOR.md).

``scenario`` reads TOML scenario files; ``engine.Simulation`` runs one replication
with the real ``aicp.router.Router``; ``runner`` runs strategies × replications in
processes and writes ``results/<scenario>/<run-id>/``; ``results`` reads them back.
"""
