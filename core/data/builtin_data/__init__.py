"""Built-in datasets shipped with finetty."""
