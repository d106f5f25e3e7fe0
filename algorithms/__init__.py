"""Balancers of eplb-bench: one module each, registered with `eplb_bench.register`.

Modules whose names start with an underscore hold helpers shared by balancers.
"""
