"""finetty's test suite."""
