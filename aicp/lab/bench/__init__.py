"""Benchmarks: the core (bench-core), the live router (bench), and the soak (soak)."""
