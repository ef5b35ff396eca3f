"""sslforge serve: a BentoML service (embed, classify, search) and a Gradio image-search demo.

Both sit on `serve.engine.Engine`, which ties export's Embedder (model dir, preprocessing,
backend) to retrieval's Index and checks every upload before it reaches the model.
"""
