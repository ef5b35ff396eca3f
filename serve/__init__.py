"""sslforge serve: a BentoML service (embed, classify, search), a Gradio image-search demo, and `sslforge search`.

Both sit on `serve.engine.Engine`, which ties export's Embedder (model dir, preprocessing,
backend) to retrieval's Index and checks every upload before it reaches the model.
serve is where the stages compose: it imports export and retrieval, which never import each other.
"""
