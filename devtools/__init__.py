"""Developer tools run from a checkout, never shipped in the wheel: `python -m devtools.NAME`.

stack (real serving processes on 127.0.0.1, shared with the tests), serve, demo,
load, faults, the bench_* benchmarks, wait_ready and screenshot_web. The top tier:
they drive every other one, the CLI included (the demo runs its commands in-process).
"""
