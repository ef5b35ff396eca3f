"""The study wing: the benchmark grid (`grid`), one cell in its own process (`cell`), the results tables
(`report`), their commands (`cli`), their plots (`plots`) and t-SNE maps (`tsne`)."""
