"""NumPy layer kernels (forward and backward) shared by the NumPy backend and training."""
