"""Imported by Python at start-up in every subprocess the tests start (this folder is first on
their ``PYTHONPATH``, set by ``tests/conftest.py``): installs the no-network guard.

If the environment has a ``sitecustomize`` of its own, this one shadows it; it is found further
down the path and run after the guard, so the environment behaves as without the tests.
"""

import importlib.machinery
import importlib.util
import os
import sys

import no_network

no_network.install()


def _run_shadowed() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


_run_shadowed()
