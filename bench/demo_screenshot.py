"""The README's demo picture: start the Gradio demo, search one image in headless Chromium, save a screenshot.

    python bench/demo_screenshot.py --model runs/quickstart --index runs/quickstart-retrieval/index \\
        --out docs/images/serve-demo.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from serve.demo import launch
from serve.engine import Engine
from serve.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tools/ (shared with the tests)
from tools.browser import search_in_browser  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="runs/quickstart", help="model dir")
    ap.add_argument("--index", default="runs/quickstart-retrieval/index", help="index dir")
    ap.add_argument("--query", type=int, default=123, help="row of the index whose image is the query")
    ap.add_argument("--k", type=int, default=8, help="results to show")
    ap.add_argument("--port", type=int, default=23090, help="loopback port for the demo")
    ap.add_argument("--out", default="docs/images/serve-demo.png", help="screenshot file")
    args = ap.parse_args()
    engine = Engine.load(Settings(model=args.model, index=args.index))
    query = engine.image_root / engine.index.paths[args.query]
    demo = launch(engine, port=args.port, k=args.k, block=False)
    try:
        page = search_in_browser(f"http://127.0.0.1:{args.port}/", query, args.k, screenshot=args.out)
    finally:
        demo.close()
    print(f"query {query}: {page['images']} results {page['captions']}; screenshot {args.out}")


if __name__ == "__main__":
    main()
