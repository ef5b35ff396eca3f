"""Training and evaluation data: image lists and folders (`images`), datasets and the epoch sampler
(`datasets`), dataset archives (`downloads`) and the loader workers' heap settings (`heap`)."""
