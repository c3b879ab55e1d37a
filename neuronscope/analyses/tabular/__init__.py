"""Networks on plain numeric vectors: which input columns matter, the exact logistic-regression
reading of a one-layer network, and how far a deeper network is from it."""
