"""What every stage may import from pretraining: files and formats, the model dir, preprocessing, backbones and
heads, starting weights, devices and processes, kNN, embeddings, doctor, errors, and the command-line options
that several stages' commands share."""
