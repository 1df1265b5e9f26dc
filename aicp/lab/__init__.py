"""The lab: benchmarks, plots, data generation and the demo.

These tools use both the live drivers (``aicp.live``) and the simulator
(``aicp.sim``), so they sit above both; neither imports anything from here.
Needs the ``[lab]`` extra (numpy, matplotlib, psutil) and ``[sim]``.
"""
