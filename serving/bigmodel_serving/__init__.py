"""Ray Serve application for BigModel (OpenAI API; vLLM on GPU, transformers on CPU)."""
