"""The Gradio image-search demo: drop an image, see its k nearest indexed images and the linear-probe guess.

    sslforge demo --model runs/NAME --index idx/NAME [--port 7860]

It runs the same Engine as the BentoML service, in-process on the CPU (no service needed). Gradio serves no
folder of ours: each hit is an indexed file (inside the index's image root, links resolved) that the demo
decodes itself within the upload limits and hands to the gallery as a picture, which Gradio re-encodes into
its own cache. So a file that is not an indexed image (a secret next to the images, /etc/passwd through a
hostile index.json) is never served, and no URL a client names is fetched.
"""
from __future__ import annotations

from PIL import Image

from retrieval.text import shown
from serve.engine import BadInput, Engine, read_image

TITLE = "sslforge image search"
EXAMPLES = 4
THUMBNAIL = 256  # longest side of a shown image, in pixels


def shown_image(engine: Engine, path: str) -> Image.Image | None:
    """The indexed image at `path` (relative to the index's root) as a thumbnail, or None when it cannot be shown:
    not an indexed file inside the root (see Engine.indexed_file), or not an image within the limits."""
    file = engine.indexed_file(path)
    if file is None:
        return None
    try:
        image = read_image(file, engine.limits)
    except BadInput:
        return None
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    return image


def answer(engine: Engine, image: str | None, k: int) -> tuple[list[tuple[Image.Image, str]], dict[str, float] | None]:
    """Gallery items (image, "label · score") of the k nearest showable images, and the probe's class probabilities."""
    if not image:
        return [], None
    feats = engine.features(engine.prepare([image]))
    hits = engine.search(feats, int(k))[0]
    gallery = [(im, f"{h['label'] or '?'} · {h['score']:.3f}") for h in hits
               if (im := shown_image(engine, h["path"])) is not None]
    probs = None
    if engine.embedder.classes:
        probs = {p["label"]: p["probability"] for p in engine.classify(feats, len(engine.embedder.classes))[0]}
    return gallery, probs


def example_images(engine: Engine, count: int = EXAMPLES) -> list[Image.Image]:
    """A few showable indexed images, evenly spaced, to try without uploading anything."""
    if engine.index is None or not len(engine.index):
        return []
    images = (shown_image(engine, p) for p in engine.index.sample_paths(count))
    return [im for im in images if im is not None]


class NoRemoteFiles:
    """Refuses Gradio's file route for URLs (`/gradio_api/file=https://...`, which Gradio would fetch and relay):
    the demo serves its own pictures and never fetches what a client names."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and "file=" in scope["path"] and "://" in scope["path"].split("file=", 1)[1]:
            from starlette.responses import JSONResponse

            refusal = JSONResponse({"error": "the demo serves its own images only; it fetches no URL"}, 403)
            return await refusal(scope, receive, send)
        return await self.app(scope, receive, send)


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
        index_name = engine.index.path.name if engine.index.path is not None else engine.index.loc.table
        gr.Markdown(f"# {TITLE}\nModel `{shown(engine.embedder.model.path.name)}` ({engine.embedder.backend}), "
                    f"index `{shown(index_name)}` ({len(engine.index):,} images). Upload or drop an image.")
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
                gallery = gr.Gallery(label="nearest images", columns=4, height="auto", format="png",
                                     elem_id="results")
        for event in (image.change, slider.release):
            event(run, inputs=[image, slider], outputs=[gallery, probe])
    return demo


def launch(engine: Engine, *, host: str = "127.0.0.1", port: int = 7860, k: int = 8, block: bool = True):
    """Serve the demo; `block=False` returns at once (tests). No folder is opened to Gradio's file route
    (allowed_paths stays empty), and uploads over the service's byte limit are refused by Gradio itself."""
    from starlette.middleware import Middleware

    demo = build_demo(engine, k)
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, show_error=True, quiet=not block,
                max_file_size=engine.limits.max_bytes, app_kwargs={"middleware": [Middleware(NoRemoteFiles)]})
    return demo
