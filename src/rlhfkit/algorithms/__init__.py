"""Pure tensor functions: losses, log-probs, KL, advantages. Imports only torch."""
