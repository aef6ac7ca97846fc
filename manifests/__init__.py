"""Key handling for faceveil: envelope encryption, key manifests, escrow, restore and audit."""
