"""Pure builders: (resource, plan, config) -> the dicts of the children. No I/O, no kopf."""
