"""Built-in quantizers: how the base model's weights are stored."""
