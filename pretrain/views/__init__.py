"""Training views: the operations (`ops`), the pipelines by name (`recipes`), their GPU twin (`gpu`) and
pictures of a pipeline's views (`plot`)."""
