"""Drivers the tests and the bench scripts share, outside the runtime packages: `process` starts `bentoml serve`
and waits until it is ready, `browser` drives the demo in headless Chromium; `make_sample.py` rebuilds the
bundled sample."""
