"""How the suite is split between pytest-xdist workers (``make test`` runs ``pytest -n 2 --dist loadgroup``).

Most tests wait on sockets, processes and child interpreters rather than on the CPU, so two
workers finish the suite well before one does. Here every test gets an ``xdist_group``:

* a test marked ``load`` (a live load loop: ``aicp bench*``, calibrate, soak, the notebooks
  that run them) is in the one group ``load``, so no two of them ever run at the same time:
  each still has a core of its own to drive its routers, agents and load generators;
* every other test is in the group of its file, so a module-scoped fixture (a gateway stack,
  a Dask cluster, the notebooks' results folder) starts once, on one worker.

Groups are handed out in collection order, so this also moves the ``load`` group, then the
files with a ``slow`` test, to the front: the long units start first and the short ones fill
in at the end, instead of one long file running alone on one worker while the other idles.
Without xdist (plain ``pytest``) only the order changes.
"""

from __future__ import annotations

import pytest

LOAD_GROUP = "load"


def _rank(item: pytest.Item, slow_files: set[str]) -> int:
    if item.get_closest_marker(LOAD_GROUP) is not None:
        return 0
    return 1 if item.nodeid.split("::", 1)[0] in slow_files else 2


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the xdist_group marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow_files = {item.nodeid.split("::", 1)[0] for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: _rank(item, slow_files))  # stable: the order within a file is kept
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        group = LOAD_GROUP if item.get_closest_marker(LOAD_GROUP) is not None else item.nodeid.split("::", 1)[0]
        item.add_marker(pytest.mark.xdist_group(group))
