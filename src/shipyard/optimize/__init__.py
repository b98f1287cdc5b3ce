"""Model optimization: conversions and quantizations that make a model cheaper to serve."""
