"""The layer as a space: factorizations (NMF, PCA) and learned dictionaries (sparse autoencoders)
of a layer's activations, whose directions are units like neurons."""
