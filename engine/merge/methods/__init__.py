"""One module per merge method; each defines SPEC (see engine.merge.spec.MethodSpec)."""
