"""Run a merge sweep: every grid point merged in memory and scored on dev, the best point per
method re-scored on devtest, and the paper-style table (base, experts, joint, best merges).

Protocol of Gain, Ekbal & Singh (arXiv 2604.02881); scores by sacreBLEU (Post, WMT 2018).

Every score goes through the cache keyed by the merge recipe's content hash, so a sweep that
was stopped (a `should_stop` callback, Ctrl-C in the CLI) or crashed resumes where it left
off: a point whose dev scores are cached is never merged again, because merging is deferred
until a translation is actually needed. A point that fails is logged with its recipe and
recorded; the sweep goes on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence


from engine.checkpoints import check_compatible, load_model, load_tokenizer, open_checkpoint
from engine.errors import DataError
from engine.merge import merge_into_model
from engine.parallel import ParallelSet
from engine.recipe import Recipe, content_hash
from engine.recipe import from_dict as recipe_from_dict
from engine.sweep.config import SweepConfig
from engine.sweep.grid import GridPoint
from engine.translate.evaluate import EvaluationResult, evaluate
from engine.translate.generate import LazyModelTranslator, prompt_signature

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
    stopped: bool = False

    @property
    def failed(self) -> list[PointResult]:
        return [p for p in self.points if p.error]


def build_recipe(config: SweepConfig, group: str, point: GridPoint) -> Recipe:
    """The mergekit recipe of one point: every expert of the group on the base, alike."""
    shared, per_model = point.split()
    return recipe_from_dict({
        "merge_method": point.method,
        "base_model": str(config.base_model),
        "models": [{"model": str(p), **({"parameters": dict(per_model)} if per_model else {})}
                   for p in config.groups[group].values()],
        **({"parameters": shared} if shared else {}),
    }, source=f"{config.source}: {group}: {point.label}")


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


def _checkpoint_translator(path, fingerprint: str, prompt: str, config: SweepConfig, device) -> LazyModelTranslator:
    return LazyModelTranslator(fingerprint, lambda: load_model(path, device=device), prompt, config.decoding, device)


def run_sweep(config: SweepConfig, device=None, progress: Progress | None = None,
              should_stop: Callable[[], bool] | None = None, use_cache: bool = True) -> SweepResult:
    """Score every point on dev, the best per (group, method) on devtest, and the table rows."""
    prints, prompts = preflight(config)
    merge_prompt = prompts[str(config.base_model)]  # merges take the base's tokenizer
    result = SweepResult(config)
    points = config.points()
    n_best = len(config.groups) * len(config.grids)
    total = len(points) + n_best + len(config.groups) * (2 + bool(config.joint))
    if config.each_expert:
        total += sum(len(g) for g in config.groups.values())
    done = 0

    def report(message: str) -> None:
        if progress:
            progress(done, total, message)

    def stop() -> bool:
        if should_stop and should_stop():
            result.stopped = True
            log.info("sweep stopped after %d of %d steps; cached results resume it", done, total)
        return result.stopped

    def merged(recipe: Recipe) -> LazyModelTranslator:
        identity = content_hash(recipe, fingerprint=lambda ref: prints[ref], seed=config.seed)
        return LazyModelTranslator(identity, lambda: merge_into_model(recipe, device=device, seed=config.seed),
                                   merge_prompt, config.decoding, device)

    def group_sets(group: str, split: dict[str, ParallelSet]) -> list[ParallelSet]:
        return [split[d] for d in config.groups[group]]

    for group, point in points:
        if stop():
            return result
        recipe = build_recipe(config, group, point)
        translator = merged(recipe)
        report(f"{group}: {point.label} (dev)")
        entry = PointResult(group, point, recipe, translator.identity)
        try:
            entry.dev = evaluate(translator, group_sets(group, config.dev), system=point.label,
                                 languages=config.languages, use_cache=use_cache)
        except Exception as err:  # a failed point must not end a long sweep; it is reported with its recipe
            entry.error = f"{type(err).__name__}: {err}"
            log.warning("sweep point failed: %s\nrecipe:\n%s", entry.error, recipe.to_yaml())
        finally:
            translator.release()
        result.points.append(entry)
        done += 1

    for group in config.groups:
        for method in config.grids:
            if stop():
                return result
            candidates = [p for p in result.points if p.group == group and p.point.method == method and p.ok]
            done += 1
            if not candidates:
                log.warning("%s: every %s point failed; no best merge", group, method)
                continue
            best = max(candidates, key=lambda p: p.score(config.metric))  # first of equals: grid order
            report(f"{group}: best {best.point.label} (devtest)")
            translator = merged(best.recipe)
            try:
                scored = evaluate(translator, group_sets(group, config.devtest), system=best.point.label,
                                  languages=config.languages, use_cache=use_cache)
            except Exception as err:  # same policy as a dev point: report with the recipe, go on
                best.error = f"devtest: {type(err).__name__}: {err}"
                log.warning("best point failed on devtest: %s\nrecipe:\n%s", best.error, best.recipe.to_yaml())
                continue
            finally:
                translator.release()
            result.best[(group, method)] = (best, scored)

    for group in config.groups:
        devtest = group_sets(group, config.devtest)
        rows = []
        for name, path in [("base", config.base_model)] + ([("joint", config.joint)] if config.joint else []):
            if stop():
                return result
            report(f"{group}: {name} (devtest)")
            translator = _checkpoint_translator(path, prints[str(path)], prompts[str(path)], config, device)
            rows.append(evaluate(translator, devtest, system=name, languages=config.languages, use_cache=use_cache))
            translator.release()
            done += 1
        if stop():
            return result
        report(f"{group}: experts (devtest)")
        own = []
        for pairs in devtest:
            path = config.groups[group][pairs.direction]
            translator = _checkpoint_translator(path, prints[str(path)], prompts[str(path)], config, device)
            own += evaluate(translator, [pairs], languages=config.languages, use_cache=use_cache).directions
            translator.release()
        done += 1
        rows.insert(1, EvaluationResult("experts (own direction)", "experts", tuple(own)))
        if config.each_expert:
            # Every expert on every direction of its group: what it does when asked for another target.
            for direction, path in config.groups[group].items():
                if stop():
                    return result
                report(f"{group}: expert {direction} on every direction (devtest)")
                translator = _checkpoint_translator(path, prints[str(path)], prompts[str(path)], config, device)
                rows.append(evaluate(translator, devtest, system=f"expert {direction}", languages=config.languages,
                                     use_cache=use_cache))
                translator.release()
                done += 1
        rows += [scored for (g, _), (_, scored) in result.best.items() if g == group]
        result.tables[group] = rows
    report("done")
    return result


def dev_summary(points: Sequence[PointResult], metric: str) -> list[dict]:
    """One row per point: group, method, parameters, dev averages, status."""
    rows = []
    for p in points:
        row = {"group": p.group, "method": p.point.method, "setting": " ".join(f"{k}={v}" for k, v in p.point.params),
               "status": "ok" if p.ok else "failed", "identity": p.identity, "error": p.error}
        for m in ("bleu", "chrf", "chrfpp", "off_target", "off_target_ref"):
            row[f"dev_{m}"] = p.dev.metric(m) if p.ok else None
        rows.append(row)
    return rows

