"""bigmodel-operator: Kubernetes operator for serving and fine-tuning LLMs."""

__version__ = "0.1.0"
