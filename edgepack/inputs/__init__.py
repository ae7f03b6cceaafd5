"""What the user gives: a model (factory, weights, .pt2) and data (npz, folders)."""
