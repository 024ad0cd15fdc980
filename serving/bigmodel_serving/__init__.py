"""Ray Serve application for BigModel (OpenAI API; vLLM on GPU, vLLM's CPU build on CPU)."""
