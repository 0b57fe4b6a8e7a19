"""finetty-freeze-layers: a finetty method that trains only the last N decoder layers."""
