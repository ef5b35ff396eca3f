"""The served model dir is a fine-tuned one (serve_helpers.make_served): /classify over HTTP answers with the
fine-tuned classifier, exactly as export's Embedder does in-process, on the session's one `bentoml serve`."""
from __future__ import annotations

import httpx
import numpy as np

from export.embedder import Embedder
from pretrain.ground.modeldir import load_model_dir


def test_classify_over_http_uses_the_finetuned_head(live_server, served) -> None:
    model = load_model_dir(served[0])
    assert model.info["method"]["name"] == "finetune" and model.info["head"]["metrics"]["trained_by"] == "finetune"
    embedder = Embedder.load(served[0])
    files = sorted(served[2].rglob("*.jpg"))[::4]
    with httpx.Client(base_url=live_server.url, timeout=60) as client:
        for f in files:
            r = client.post("/classify", files=[("image", (f.name, f.read_bytes(), "image/jpeg"))], data={"k": "3"})
            assert r.status_code == 200, r.text
            answer = r.json()["predictions"]
            probs = embedder.predict([f])[0]
            assert [a["label"] for a in answer] == [model.classes[j] for j in np.argsort(-probs)]
            np.testing.assert_allclose([a["probability"] for a in answer], np.sort(probs)[::-1], atol=1e-5)
