"""The one data flow behind the dashboard and the CLI, as plain functions, one module a step.

    catalog   (checkpoints under the model roots, named and given directions)
    recipes   (pickers -> recipe -> mergekit YAML and back)
    systems   (what can be scored or compared, and its cache identity)
    models    (a system -> a live model, merged in memory on a miss)
    data      (parallel sets by split and direction)
    scores    (translation scores of systems)
    analyses  (captured span statistics -> CKA, neuron selectivity)
    memo      (finished results in process memory)
    prefetch  (background work a user is about to ask for)
    sweep_curves (one parameter of a merge swept and scored)

A *system* is anything the dashboard can score or compare: a discovered checkpoint (identity:
its fingerprint) or the merge a recipe describes (identity: the recipe's content hash).
Identities are what the content-addressed cache is keyed by, so a view that was computed once
(by any session, or by the CLI) comes back without loading a model at all; models are loaded
or merged only when the cache misses, through `models.ModelCache`, which the dashboard keeps in
`st.cache_resource` and therefore shares between sessions (it is thread-safe).

Nothing here imports Streamlit.
"""
