"""The live drivers: the asyncio WebSocket router, agent client and controller.

They carry out the sans-I/O core's actions over real sockets and clocks. Nothing
here imports the simulator (``aicp.sim``), the tools (``aicp.lab``) or the command
line (``aicp.cli``).
"""
