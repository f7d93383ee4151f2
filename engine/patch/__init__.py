"""Causal experiments on merges: layer patching routed by target language (with random-block
controls), layer swapping, and depth schedules (LiNeS).

    layers      layer sets: last k, first k, explicit lists, seeded random controls
    patching    a layer set copied from another checkpoint into a live model, and restored
    systems     patched systems and their content identity
    experiment  the routed experiment and its table (merge, patched, controls, expert, base)
    report      that table as Markdown, CSV or JSON
    schedules   layer swapping and LiNeS as per-layer weight lists of mergekit recipes
    export      a patched system written as a Hugging Face checkpoint
"""
