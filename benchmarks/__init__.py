"""Speed and memory benchmarks of lcam's explainers (``python benchmarks/run.py``; see README.md).

Layout, each module importing only from those above it in this list::

    models.py    the benchmark models (ModelSpec, MODELS), their backbones and images
    rows.py      Row (one measurement, as the JSON holds it) and the markdown table
    machine.py   CPU, load, library versions; the process's RSS
    timing.py    warm-up and timed runs (time_call)
    memory.py    peak tensor memory of one call (peak_tensor_mb)
    passes.py    forward/backward passes counted with hooks (PassCounter)
    cases/       one module per measurement group: what a (model, method) measurement calls
    measure.py   one measurement in this process (the child): case -> timed, counted Row
    run.py       the CLI: the suite, one subprocess per measurement, tables and JSON

Nothing here runs in the test suite except ``tests/benchmarks/test_benchmarks_smoke.py``.
"""
