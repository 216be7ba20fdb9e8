"""Benchmarks for sms-bridge: ``make bench`` (``python -m bench``).

Each benchmark reports a figure next to a baseline or a bound measured or derived in the same
run, because absolute numbers on a shared 2-core machine say little. Everything runs on
127.0.0.1 with bounded counts and time limits; results go to ``bench/results/latest.json`` and
``BENCHMARKS.md``. A figure that misses its aim is reported, never turned into a failure:
benchmarks inform, tests assert.
"""
