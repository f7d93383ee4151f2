"""Run a merge sweep: every grid point merged in memory and scored on dev, the best point per
method re-scored on devtest, and the paper-style table (base, experts, joint, best merges).

Protocol of Gain, Ekbal & Singh (arXiv 2604.02881); scores by sacreBLEU (Post, WMT 2018).

Every score goes through the cache keyed by the merge recipe's content hash, so a sweep that
was stopped (a `should_stop` callback, Ctrl-C in the CLI) or crashed resumes where it left
off: a point whose dev scores are cached is never merged again, because merging is deferred
until a translation is actually needed. Points whose recipes differ only in weights that
normalisation cancels (engine.recipe.without_inert_weights) are one model: merged and scored once,
as the first of them in grid order. A point that fails is logged with its recipe and recorded;
the sweep goes on.

Each point (dev) and each table row (devtest) is one ScoreJob run by a backend
(engine.sweep.backend: in this process, or Ray tasks); the driver answers cached jobs from the
cache and sends only the rest, and everything else (choosing the best point, the table) is
this module's, whichever backend ran the jobs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from engine.checkpoints import check_compatible, load_model, load_tokenizer, open_checkpoint
from engine.errors import DataError
from engine.merge import merge_into_model
from engine.parallel import ParallelSet
from engine.recipe import Recipe, content_hash, without_inert_weights
from engine.recipe import from_dict as recipe_from_dict
from engine.settings import cache_store
from engine.sweep.backend import Backend, LocalBackend
from engine.sweep.config import SweepConfig
from engine.sweep.grid import GridPoint
from engine.sweep.progress import SweepProgress
from engine.translate.evaluate import DirectionResult, EvaluationResult, direction_cache_key, evaluate
from engine.translate.generate import DecodingSettings, LazyModelTranslator, prompt_signature

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]  # (done, total, message)


@dataclass
class PointResult:
    """One grid point of one group: its dev result, or why it failed."""

    group: str
    point: GridPoint
    recipe: Recipe
    identity: str
    dev: EvaluationResult | None = None
    error: str = ""
    same_as: str = ""  # label of the earlier point of the group that merges to the same model

    @property
    def ok(self) -> bool:
        return self.dev is not None

    def score(self, metric: str) -> float:
        return self.dev.metric(metric) if self.dev else float("-inf")


@dataclass
class SweepResult:
    config: SweepConfig
    points: list[PointResult] = field(default_factory=list)
    best: dict[tuple[str, str], tuple[PointResult, EvaluationResult]] = field(default_factory=dict)
    tables: dict[str, list[EvaluationResult]] = field(default_factory=dict)  # group -> rows on devtest
    errors: list[str] = field(default_factory=list)  # table rows that failed (left out of the table)
    fingerprints: dict[str, str] = field(default_factory=dict)  # checkpoint path -> weights fingerprint
    stopped: bool = False

    @property
    def failed(self) -> list[PointResult]:
        return [p for p in self.points if p.error]


def build_recipe(config: SweepConfig, group: str, point: GridPoint) -> Recipe:
    """The mergekit recipe of one point: every expert of the group on the base, alike."""
    shared, per_model = point.split()
    return recipe_from_dict(
        {
            "merge_method": point.method,
            "base_model": str(config.base_model),
            "models": [
                {"model": str(p), **({"parameters": dict(per_model)} if per_model else {})}
                for p in config.groups[group].values()
            ],
            **({"parameters": shared} if shared else {}),
        },
        source=f"{config.source}: {group}: {point.label}",
    )


def preflight(config: SweepConfig) -> tuple[dict[str, str], dict[str, str]]:
    """Everything checkable before work: checkpoints (roots, safetensors, compatibility, chat
    templates) and every point's recipe. Returns (path -> fingerprint, path -> prompt signature)."""
    paths = [config.base_model] + [p for g in config.groups.values() for p in g.values()]
    if config.joint:
        paths.append(config.joint)
    checkpoints = {str(p): open_checkpoint(p) for p in dict.fromkeys(paths)}
    check_compatible(list(checkpoints.values()))
    prompts = {}
    for path, ckpt in checkpoints.items():
        tokenizer = load_tokenizer(ckpt)
        if not getattr(tokenizer, "chat_template", None):
            raise DataError(f"{path}: tokenizer has no chat template; the paper's prompt needs one")
        prompts[path] = prompt_signature(tokenizer)
    for group, point in config.points():
        build_recipe(config, group, point)  # RecipeError names the point
    return {path: ckpt.fingerprint for path, ckpt in checkpoints.items()}, prompts


@dataclass(frozen=True)
class ScoreJob:
    """One system scored on some sets: a sweep point on dev, or a table row on devtest. Holds all a
    worker needs (picklable): the merge recipe or the checkpoint folder, and what keys the cache."""

    system: str  # the row's label
    identity: str  # recipe content hash or checkpoint fingerprint
    prompt: str  # prompt signature of the tokenizer that will translate
    sets: tuple[ParallelSet, ...]
    languages: tuple[str, ...]
    decoding: DecodingSettings
    device: str  # 'cpu' or 'cuda': where the job runs, part of the cache key
    use_cache: bool = True
    recipe: Recipe | None = None  # a merge, built in memory...
    checkpoint: str | None = None  # ...or a checkpoint folder
    seed: int = 0

    def translator(self) -> LazyModelTranslator:
        if self.recipe is not None:
            load = lambda: merge_into_model(self.recipe, device=self.device, seed=self.seed)  # noqa: E731
        else:
            load = lambda: load_model(self.checkpoint, device=self.device)  # noqa: E731
        return LazyModelTranslator(self.identity, load, self.prompt, self.decoding, self.device)


def score_job(job: ScoreJob) -> EvaluationResult:
    """Merge or load the model (only if a direction is not cached), translate, score, cache."""
    translator = job.translator()
    try:
        return evaluate(translator, job.sets, system=job.system, languages=job.languages, use_cache=job.use_cache)
    finally:
        translator.release()


class _KeysOn:
    """A job's translator as the cache sees it, for a device this process may lack (a Ray GPU
    worker driven from a CPU machine): same parts, device kind taken from the job."""

    def __init__(self, job: ScoreJob):
        self.identity, self._job = job.identity, job

    def cache_parts(self) -> dict:
        parts = LazyModelTranslator(self.identity, None, self._job.prompt, self._job.decoding, "cpu").cache_parts()
        return {**parts, "device": self._job.device}


def cached_score(job: ScoreJob) -> EvaluationResult | None:
    """The job's result when every direction is in the cache (nothing loaded), else None."""
    if not job.use_cache:
        return None
    store = cache_store()
    translator = _KeysOn(job)
    found = []
    for pairs in job.sets:
        entry = store.get(direction_cache_key(translator, pairs, job.languages))
        if entry is None:
            return None
        found.append(DirectionResult.from_dict(entry.meta))
    return EvaluationResult(job.system or job.identity, job.identity, tuple(found))


def _error(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def run_sweep(
    config: SweepConfig,
    device=None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    use_cache: bool = True,
    backend: Backend | None = None,
) -> SweepResult:
    """Score every point on dev, the best per (group, method) on devtest, and the table rows.

    Jobs run on `backend` (default: in this process); the driver answers cached jobs itself and
    sends only the rest. A progress record is kept in the cache folder (engine.sweep.progress).
    """
    prints, prompts = preflight(config)
    backend = backend or LocalBackend()
    on = backend.device(device)
    result = SweepResult(config, fingerprints=prints)
    points = config.points()
    n_rows = sum(1 + bool(config.joint) + len(g) for g in config.groups.values())
    total = len(points) + len(config.groups) * len(config.grids) + n_rows
    record = SweepProgress(config, backend.name, total)
    steps = {"done": 0, "failed": 0}

    def advance(message: str, failed: bool = False) -> None:
        steps["done"] += 1
        steps["failed"] += failed
        record.update(steps["done"], message, steps["failed"])
        if progress:
            progress(steps["done"], total, message)

    def stop() -> bool:
        if should_stop and should_stop():
            result.stopped = True
        return result.stopped

    def job(system: str, identity: str, sets, recipe: Recipe | None = None, path=None) -> ScoreJob:
        # Merges take the base's tokenizer.
        prompt = prompts[str(config.base_model) if recipe is not None else str(path)]
        return ScoreJob(
            system,
            identity,
            prompt,
            tuple(sets),
            config.languages,
            config.decoding,
            on,
            use_cache,
            recipe=recipe,
            checkpoint=str(path) if path else None,
            seed=config.seed,
        )

    def run_jobs(jobs: list[ScoreJob], groups: list[str], phase: str) -> list[EvaluationResult | BaseException | None]:
        outcomes: list = [cached_score(j) for j in jobs]
        for j, g, o in zip(jobs, groups, outcomes):
            if o is not None:
                advance(f"{g}: {j.system} ({phase}, cached)")
        todo = [i for i, o in enumerate(outcomes) if o is None]

        def done(k: int, value, error: BaseException | None) -> None:
            i = todo[k]
            outcomes[i] = value if error is None else error
            advance(f"{groups[i]}: {jobs[i].system} ({phase}{', failed' if error else ''})", failed=error is not None)

        backend.map(score_job, [jobs[i] for i in todo], done, stop)
        return outcomes

    def finish(state: str) -> SweepResult:
        if state == "stopped":
            log.info("sweep stopped after %d of %d steps; cached results resume it", steps["done"], total)
        record.finish(state)
        return result

    def group_sets(group: str, split: dict[str, ParallelSet]) -> list[ParallelSet]:
        return [split[d] for d in config.groups[group]]

    entries = point_results(config, prints)
    # Points that merge to the same model are merged and scored once, as their first point.
    distinct = [e for e in entries if not e.same_as]
    dev_jobs = [job(e.point.label, e.identity, group_sets(e.group, config.dev), e.recipe) for e in distinct]
    dev_outcomes = run_jobs(dev_jobs, [e.group for e in distinct], "dev")
    by_point = {(e.group, e.point.label): outcome for e, outcome in zip(distinct, dev_outcomes)}
    for entry in entries:
        outcome = by_point[(entry.group, entry.same_as or entry.point.label)]
        if outcome is None:
            continue  # stopped before it ran
        if entry.same_as:
            advance(f"{entry.group}: {entry.point.label} (dev, the same model as {entry.same_as})")
            if isinstance(outcome, EvaluationResult):
                outcome = replace(outcome, system=entry.point.label, identity=entry.identity)
        if isinstance(outcome, BaseException):  # a failed point must not end a long sweep
            entry.error = _error(outcome)
            log.warning("sweep point failed: %s\nrecipe:\n%s", entry.error, entry.recipe.to_yaml())
        else:
            entry.dev = outcome
        result.points.append(entry)
    if result.stopped:
        return finish("stopped")

    # Devtest: the best point per (group, method), and every checkpoint row of each table.
    # (group, row kind, best point for "best" / expert's direction for "own" and "each", job)
    table_jobs: list[tuple[str, str, object, ScoreJob]] = []
    for group in config.groups:
        devtest = group_sets(group, config.devtest)
        for method in config.grids:
            candidates = [p for p in result.points if p.group == group and p.point.method == method and p.ok]
            if not candidates:
                log.warning("%s: every %s point failed; no best merge", group, method)
                advance(f"{group}: no {method} point to score on devtest", failed=True)
                continue
            best = max(candidates, key=lambda p: p.score(config.metric))  # first of equals: grid order
            table_jobs.append((group, "best", best, job(best.point.label, best.identity, devtest, best.recipe)))
        named = [("base", config.base_model)] + ([("joint", config.joint)] if config.joint else [])
        for name, path in named:
            table_jobs.append((group, name, None, job(name, prints[str(path)], devtest, path=path)))
        for pairs in devtest:
            # Every expert on every direction of its group, as the paper (what it does when asked for
            # another target); the "experts (own direction)" row takes its cells from these rows.
            path = config.groups[group][pairs.direction]
            sets = devtest if config.each_expert else [pairs]
            expert_job = job(f"expert {pairs.direction}", prints[str(path)], sets, path=path)
            table_jobs.append((group, "each" if config.each_expert else "own", pairs.direction, expert_job))
    outcomes = run_jobs([j for *_, j in table_jobs], [g for g, *_ in table_jobs], "devtest")
    if result.stopped:
        return finish("stopped")

    for group in config.groups:
        rows, own, best_rows, missing = [], [], [], False
        for (g, kind, extra, j), outcome in zip(table_jobs, outcomes):
            if g != group:
                continue
            if isinstance(outcome, BaseException):
                if kind == "best":  # same policy as a dev point: report with the recipe, go on
                    extra.error = f"devtest: {_error(outcome)}"
                    log.warning("best point failed on devtest: %s\nrecipe:\n%s", extra.error, extra.recipe.to_yaml())
                else:
                    result.errors.append(f"{group}: {j.system}: {_error(outcome)}")
                    log.warning("%s: %s failed on devtest: %s", group, j.system, _error(outcome))
                missing |= kind in ("own", "each")
            elif kind == "best":
                result.best[(group, extra.point.method)] = (extra, outcome)
                best_rows.append(outcome)
            elif kind in ("own", "each"):
                own += [d for d in outcome.directions if d.direction == extra]
                if kind == "each":
                    rows.append(outcome)
            else:
                rows.append(outcome)
        if not missing:
            rows.insert(1, EvaluationResult("experts (own direction)", "experts", tuple(own)))
        result.tables[group] = rows + best_rows
    return finish("done")


def point_results(config: SweepConfig, prints: dict[str, str]) -> list[PointResult]:
    """Every (group, point) with its recipe and identity, in grid order; a point whose recipe has
    the same content as an earlier one's once inert weights are set aside (engine.recipe.
    without_inert_weights: normalize on, equal weights) names that point in `same_as`."""
    out, first = [], {}
    for group, point in config.points():
        recipe = build_recipe(config, group, point)
        identity = content_hash(recipe, fingerprint=lambda ref: prints[ref], seed=config.seed)
        content = content_hash(without_inert_weights(recipe), fingerprint=lambda ref: prints[ref], seed=config.seed)
        same_as = first.setdefault(content, point.label)
        out.append(PointResult(group, point, recipe, identity, same_as="" if same_as == point.label else same_as))
    return out


def dev_summary(points: Sequence[PointResult], metric: str) -> list[dict]:
    """One row per point: group, method, parameters, dev averages, status."""
    rows = []
    for p in points:
        row = {
            "group": p.group,
            "method": p.point.method,
            "setting": " ".join(f"{k}={v}" for k, v in p.point.params),
            "status": "ok" if p.ok else "failed",
            "identity": p.identity,
            "same_model_as": p.same_as,
            "error": p.error,
        }
        for m in ("bleu", "chrf", "chrfpp", "off_target", "off_target_ref"):
            row[f"dev_{m}"] = p.dev.metric(m) if p.ok else None
        rows.append(row)
    return rows
