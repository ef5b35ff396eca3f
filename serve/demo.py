"""The Gradio image-search demo: drop an image, see its k nearest indexed images and the linear-probe guess.

    sslforge demo --model runs/NAME --index idx/NAME [--port 7860]

It runs the same Engine as the BentoML service, in-process on the CPU (no service needed). The
gallery shows files from the index's image root, so that folder is passed to Gradio's allowed_paths.
"""
from __future__ import annotations

from pathlib import Path

from serve.engine import BadInput, Engine

TITLE = "sslforge image search"
EXAMPLES = 4


def answer(engine: Engine, image: str | None, k: int) -> tuple[list[tuple[str, str]], dict[str, float] | None]:
    """Gallery items (image file, "label · score") of the k nearest images, and the probe's class probabilities."""
    if not image:
        return [], None
    feats = engine.features(engine.prepare([image]))
    root = engine.image_root or Path(".")
    hits = engine.search(feats, int(k))[0]
    gallery = [(str(root / h["path"]), f"{h['label'] or '?'} · {h['score']:.3f}") for h in hits]
    probs = None
    if engine.embedder.classes:
        probs = {p["label"]: p["probability"] for p in engine.classify(feats, len(engine.embedder.classes))[0]}
    return gallery, probs


def example_images(engine: Engine, count: int = EXAMPLES) -> list[str]:
    """A few indexed images, evenly spaced, to try without uploading anything."""
    root = engine.image_root
    if root is None or engine.index is None or not len(engine.index):
        return []
    step = max(1, engine.index.ntotal // count)
    files = [root / p for p in engine.index.paths[::step][:count]]
    return [str(f) for f in files if f.is_file()]


def build_demo(engine: Engine, k: int = 8):
    """The Blocks app (not launched)."""
    import gradio as gr

    if engine.index is None:
        raise BadInput("the demo searches an index: pass --index")

    def run(image: str | None, k: int):
        try:
            return answer(engine, image, k)
        except BadInput as e:
            raise gr.Error(str(e)) from None

    max_k = min(engine.limits.max_k, len(engine.index))
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\nModel `{engine.embedder.model.path}` ({engine.embedder.backend}), "
                    f"index `{engine.index.path}` ({len(engine.index):,} images). Upload or drop an image.")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="filepath", label="query image", sources=["upload", "clipboard"], height=256,
                                 elem_id="query")
                slider = gr.Slider(1, max_k, value=min(k, max_k), step=1, label="k (results)", elem_id="k")
                probe = gr.Label(label="linear-probe prediction", num_top_classes=3,
                                 visible=bool(engine.embedder.classes), elem_id="probe")
                examples = example_images(engine)
                if examples:
                    gr.Examples(examples, inputs=image, label="examples from the index")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="nearest images", columns=4, height="auto", elem_id="results")
        for event in (image.change, slider.release):
            event(run, inputs=[image, slider], outputs=[gallery, probe])
    return demo


def launch(engine: Engine, *, host: str = "127.0.0.1", port: int = 7860, k: int = 8, block: bool = True):
    """Serve the demo; `block=False` returns at once (tests)."""
    demo = build_demo(engine, k)
    allowed = [str(engine.image_root)] if engine.image_root else []
    demo.launch(server_name=host, server_port=port, allowed_paths=allowed, prevent_thread_lock=not block,
                show_error=True, quiet=not block)
    return demo
