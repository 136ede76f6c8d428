"""LatentLab entry point: no sub-command opens the app on the demo workspace; a
sub-command runs the same engine job headless with a terminal progress bar."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

LAUNCHED = time.perf_counter()  # before the heavy imports: "ready N s after launch"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in _csv(text)]


def _floats(text: str) -> list[float]:
    return [float(x) for x in _csv(text)]


def _spec(spec, args: argparse.Namespace, **given):
    """``spec`` (an engine.api spec class) from the flags named after its fields (and
    ``given``); a bad value is named by its flag: '--k should be a number above 0, not 0'."""
    values = {f: getattr(args, f) for f in spec.model_fields if hasattr(args, f)}
    return spec.parse({**values, **given}, name=lambda field: "--" + field.replace("_", "-"))


def cmd_capture(args: argparse.Namespace) -> int:
    from engine.api import CaptureSpec, capture, capture_distributed, run_cli
    spec = _spec(CaptureSpec, args, hooks=_csv(args.hooks))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    job = capture_distributed if world > 1 else capture
    result = run_cli(job, device=args.device, quiet=args.quiet or rank != 0, **spec.job_params())
    if rank == 0:
        print(f"{result.path}: {result.rows} rows committed ({result.added} added in {result.seconds:.1f} s)")
        _print_cosines(result.path)
    return 0


def _print_cosines(path: str) -> None:
    """The cosine to float32 a reduced-precision capture recorded, one line per hook point."""
    from engine.api import ActivationStore
    with ActivationStore.open(path) as store:
        model_dtype, cosines = store.meta.model_dtype, store.float32_cosine
    for hook, c in sorted(cosines.items()):
        print(f"{model_dtype} model, {hook}: cosine to float32 on the first batch "
              f"mean {c['mean']:.6f}, min {c['min']:.6f} ({c['rows']} rows)")


def cmd_store_info(args: argparse.Namespace) -> int:
    from engine.api import ActivationStore
    with ActivationStore.open(args.store) as store:
        info = store.summary()
        if args.context is not None:
            ids, at = store.context(args.context)
            info["context"] = {"row": args.context, "tokens": ids.tolist(), "at": at}
            if args.decode:
                from engine.api import load_model
                info["context"]["text"] = load_model(store.meta.model_id).decode(ids)
    print(json.dumps(info, indent=2))
    return 0


def cmd_sae_info(args: argparse.Namespace) -> int:
    from engine.api import sae_info
    info = sae_info(args.sae)
    width = max(map(len, info))
    for name, value in info.items():
        print(f"{name + ':':<{width + 1}} {value}")
    return 0


def cmd_hooks(args: argparse.Namespace) -> int:
    from engine.api import load_model
    model = load_model(args.model)
    for name in model.hook_points():
        print(name)
    return 0


def cmd_zoo_train(args: argparse.Namespace) -> int:
    from engine.api import run_cli, train_zoo
    folders = run_cli(train_zoo, device=args.device, out=args.out, arch=args.arch,
                      widths=tuple(_ints(args.widths)), depths=tuple(_ints(args.depths)),
                      seeds=tuple(_ints(args.seeds)), epochs=args.epochs)
    print("\n".join(folders))
    return 0


def cmd_zoo_prune(args: argparse.Namespace) -> int:
    from engine.api import prune_zoo, run_cli
    folders = run_cli(prune_zoo, device=args.device, model=args.model, out=args.out,
                      methods=tuple(_csv(args.methods)), sparsities=tuple(_floats(args.sparsities)),
                      seed=args.seed)
    print("\n".join(folders))
    return 0


def cmd_train_sae(args: argparse.Namespace) -> int:
    from engine.api import TrainSpec, run_cli, train_sae, train_sae_distributed
    spec = _spec(TrainSpec, args)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    job = train_sae_distributed if world > 1 else train_sae
    result = run_cli(job, device=args.device, quiet=args.quiet or rank != 0, **spec.job_params())
    if rank == 0:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items())
        print(f"{result.out}: {result.steps} steps; held-out {shown}")
    return 0


def cmd_feature_stats(args: argparse.Namespace) -> int:
    from engine.api import load_sae
    from engine.errors import LatentLabError
    if (args.store is None) == (args.source is None):
        raise LatentLabError("give either --store STORE (statistics of its rows) or --model M "
                             "--source S --out STORE (one pass over the source)")
    sae = load_sae(args.sae)
    hook = args.hook or sae.cfg.hook_name
    if not hook:
        raise LatentLabError(f"{args.sae}: the SAE names no hook point; pass --hook")
    sae_id = args.sae_id or Path(args.sae).resolve().name
    result = (_feature_pass(args, sae, hook, sae_id) if args.source is not None
              else _feature_stats_of_store(args, hook, sae_id))
    print(f"{result.stats_path}: {result.sae_id}: {result.d_sae} latents over {result.n_rows} rows "
          f"in {result.seconds:.1f} s (pass {result.pass_seconds:.1f} s)"
          + (f"; read from the cache: {', '.join(result.cached_tables)}" if result.cached_tables else ""))
    return 0


def _feature_pass(args: argparse.Namespace, sae, hook: str, sae_id: str):
    """feature-stats --model --source --out: one pass of the model over the source."""
    from engine.api import feature_pass, run_cli
    from engine.errors import LatentLabError
    if args.model is None or args.out is None:
        raise LatentLabError("a pass over --source needs --model and --out")
    return run_cli(feature_pass, device=args.device, model=args.model, source=args.source, sae=sae,
                   hook=hook, sae_id=sae_id, out=args.out, max_tokens=args.max_tokens,
                   batch_size=args.batch_size or 8, ctx_len=args.ctx_len, dtype=args.dtype,
                   top_n=args.top_n, write_acts=not args.no_acts, logits=not args.no_logits)


def _feature_stats_of_store(args: argparse.Namespace, hook: str, sae_id: str):
    """feature-stats --store: one pass over the rows a capture stored."""
    from engine.api import run_cli, sae_feature_stats
    return run_cli(sae_feature_stats, device=args.device, store=args.store, sae=args.sae, hook=hook,
                   sae_id=sae_id, model=args.model, logits=not args.no_logits,
                   batch_size=args.batch_size or 4096, top_n=args.top_n)


def cmd_demo(args: argparse.Namespace) -> int:
    """Build (or finish) the demo workspace headless: capture, SAE, statistics, projections."""
    from engine.api import DemoSpec, build_demo, default_workspace, run_cli
    spec = _spec(DemoSpec, args, umap=not args.no_umap)
    root = Path(args.workspace) if args.workspace else default_workspace()
    print(f"workspace {root}", file=sys.stderr)
    ws = run_cli(build_demo, device=args.device, root=root, spec=spec)
    print(f"demo workspace {ws.root}: store {ws.store.name} ({ws.hook}), SAE {ws.sae.name}, "
          f"projections in {ws.projections_dir}")
    return 0


def cmd_project(args: argparse.Namespace) -> int:
    """A 2-D layout (PCA or UMAP) of a store's rows or an SAE's latents, saved as .npz."""
    import numpy as np

    from engine.api import project, run_cli
    layout = run_cli(project, device=args.device, store_path=args.store, hook=args.hook,
                     method=args.method, what=args.what, sae_path=args.sae,
                     cache_dir=args.cache_dir, max_rows=args.max_rows, seed=args.seed)
    np.savez(args.out, xy=layout.xy, ids=layout.ids, name=layout.name)
    print(f"{args.out}: {layout.name}, {len(layout.ids)} points")
    return 0


def _corruption(text: str) -> tuple[str, float]:
    kind, _, severity = text.partition(":")
    try:
        return kind, float(severity or 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--corruption {text!r}: expected KIND:SEVERITY, "
                                         "e.g. noise:0.3") from None


def cmd_compare_pruned(args: argparse.Namespace) -> int:
    """Loss geometry of a dense zoo model and its pruned variants under corruptions."""
    from engine.api import compare_pruned, run_cli, save_comparison
    corruptions = args.corruption or [("none", 0.0), ("noise", 0.3), ("blur", 1.0), ("dropout", 0.3)]
    result = run_cli(compare_pruned, device=args.device, dense=args.dense, pruned=args.pruned,
                     corruptions=corruptions, source=args.source, seed=args.seed,
                     centroids=args.centroids)
    save_comparison(result, args.out)
    print(f"{'model':<14} {'corruption':<12} {'acc':>6} {'loss':>7} {'norm':>7} {'angle_w':>8} "
          f"{'angle_c':>8} {'margin':>7} {'KS loss':>8} {'p':>9} {'flips':>6}")
    for r in result.summary:
        ks, p = r.ks.get("loss", (float("nan"), float("nan")))
        flips = len(result.flips.get((r.model, r.corruption), ()))
        print(f"{r.model:<14} {r.corruption:<12} {r.accuracy:6.3f} {r.mean_loss:7.3f} {r.mean_norm:7.2f} "
              f"{r.mean_angle_weight:8.3f} {r.mean_angle_centroid:8.3f} {r.mean_margin:7.2f} "
              f"{ks:8.3f} {p:9.2g} {flips:6d}")
    print(f"{args.out}: {len(result.models)} models x {len(result.corruptions)} corruptions")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Similarity measures between two hook points, or a layer x layer matrix of one."""
    from engine.api import MEASURES, ActivationStore, compare, layer_matrix, run_cli
    from engine.errors import LatentLabError
    args.a, args.b = args.a_flag or args.a, args.b_flag or args.b
    if not args.a or not args.b:
        raise LatentLabError("compare needs two sides: A B, or --a STORE[:HOOK] --b STORE[:HOOK]")
    aliases = {"cka": "linear_cka", "cca": "svcca", "rsa": "rsa_pearson", "knn": "mutual_knn"}
    measures = [aliases.get(m, m) for m in _csv(args.measures)] if args.measures != "all" else list(MEASURES)
    if args.layers:
        (path_a, hooks_a), (path_b, hooks_b) = _layer_spec(args.a), _layer_spec(args.b)
        if len(measures) != 1:
            raise SystemExit("error: --layers takes exactly one measure")
        if not hooks_a or not hooks_b:
            with ActivationStore.open(path_a) as sa, ActivationStore.open(path_b) as sb:
                hooks_a, hooks_b = hooks_a or list(sa.hooks), hooks_b or list(sb.hooks)
        result = run_cli(layer_matrix, device=args.device, store_a=Path(path_a), hooks_a=hooks_a,
                         store_b=Path(path_b), hooks_b=hooks_b, measure=measures[0],
                         max_rows=args.max_rows)
        data = {"measure": result.measure, "n_rows": result.n_rows, "hooks_a": result.hooks_a,
                "hooks_b": result.hooks_b, "values": result.values.tolist()}
        width = max(len(h) for h in result.hooks_a)
        for hook, row in zip(result.hooks_a, result.values, strict=True):
            print(f"{hook:<{width}} " + " ".join(f"{v:6.3f}" for v in row))
    else:
        result = run_cli(compare, device=args.device, a=args.a, b=args.b, measures=measures,
                         max_rows=args.max_rows, seed=args.seed)
        data = {"a": result.a, "b": result.b, "n_rows": result.n_rows, "values": result.values,
                "notes": result.notes}
        for name, value in result.values.items():
            print(f"{name:<20} {value: .6f}")
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
    if args.out:
        Path(args.out).write_text(json.dumps(data, indent=1) + "\n")
    return 0


def cmd_kernel_analysis(args: argparse.Namespace) -> int:
    """Classification error of a label against the number of leading kernel components."""
    from engine.api import run_cli, store_kernel_analysis
    comps = _ints(args.components) if args.components else None
    curve = run_cli(store_kernel_analysis, device=args.device, store=args.store, hook=args.hook,
                    label=args.label, components=comps, max_rows=args.max_rows, seed=args.seed)
    for k, err in zip(curve.components, curve.errors, strict=True):
        print(f"{k:5d} components: error {err:.4f}")
    return 0


def _layer_spec(spec: str) -> tuple[str, list[str]]:
    """STORE.h5[:H1,H2,...] -> (path, hooks); no hooks means all of the store's."""
    path, _, hooks = spec.partition(".h5:")
    return (path + ".h5", _csv(hooks)) if hooks or spec.endswith(".h5:") else (spec, [])


def cmd_match(args: argparse.Namespace) -> int:
    """Match units of two hook points (or latents of two SAEs)."""
    from engine.api import match, run_cli
    result = run_cli(match, device=args.device, a=args.a, b=args.b, method=args.method,
                     max_rows=args.max_rows, seed=args.seed, alpha=args.alpha,
                     max_units=args.max_units, n_clusters=args.n_clusters, threshold=args.threshold)
    print(_describe_match(args.method, result))
    return 0


def _describe_match(method: str, r) -> str:
    import numpy as np
    if method == "hungarian":
        return (f"{len(r.corr)} matched pairs: mean correlation {np.mean(r.corr):.3f}, mean best "
                f"correlation {np.mean(r.best_corr):.3f}")
    if method == "sparse":
        return (f"median held-out R^2 {np.median(r.r2):.3f} with a median of "
                f"{np.median(r.n_nonzero):.0f} units of A per unit of B")
    if method == "clusters":
        return "clusters: share of units from A " + " ".join(f"{m:.2f}" for m in r.mixing)
    return (f"SAE latents matched at cos >= threshold: {r.share_matched:.1%} (Hungarian), "
            f"{r.share_best:.1%} (best match); {'exact' if r.exact else 'sparsified'} assignment")


def cmd_stitch_stores(args: argparse.Namespace) -> int:
    """Stitch two row-aligned stores' hook points from their rows."""
    from engine.api import run_cli, stitch_stores
    r = run_cli(stitch_stores, device=args.device, a=args.a, b=args.b, ridge=args.ridge,
                max_tokens=args.max_tokens, downstream=not args.no_downstream)
    print(f"map {r.a} -> {r.b}: held-out R^2 {r.r2_eval:.4f} (training {r.r2_train:.4f}); "
          f"{r.n_train} training and {r.n_eval} held-out rows")
    if r.n_tokens:
        print(f"B's next-token loss: stitched {r.loss_stitched:.4f}, own {r.loss_b:.4f}, mean row "
              f"{r.loss_mean:.4f}; loss recovered {r.loss_recovered:.1%} over {r.n_tokens} tokens")
    elif r.note:
        print(r.note)
    return 0


def cmd_stitch(args: argparse.Namespace) -> int:
    """Stitch model A's layer into model B's and report B's task on the mapped activations."""
    from engine.api import run_cli, stitch
    r = run_cli(stitch, device=args.device, model_a=args.model_a, hook_a=args.hook_a,
                model_b=args.model_b, hook_b=args.hook_b, train_source=args.train,
                eval_source=args.eval, ridge=args.ridge, max_tokens=args.max_tokens,
                per_position=args.per_position, finetune_steps=args.finetune_steps)
    print(f"stitched {r.hook_a} -> {r.hook_b}: accuracy {r.accuracy_stitched:.4f} (B alone "
          f"{r.accuracy_b:.4f}, A alone {r.accuracy_a:.4f}); loss {r.loss_stitched:.4f} (B alone "
          f"{r.loss_b:.4f}); map R^2 {r.fit_r2:.3f}; {r.n_train} training and {r.n_eval} "
          "held-out rows")
    return 0


def _steering_recipe(args: argparse.Namespace) -> list[dict]:
    """--recipe's items, then each --intervention's (the short form): the recipe items the
    steering view keeps in AppState; mean-ablations read their means from --store."""
    from engine.api import SteeringRecipe, resolve_path, short_form_items
    from engine.errors import LatentLabError
    items = SteeringRecipe.load(args.recipe, f"--recipe {args.recipe}").dicts() if args.recipe else []
    for item in items:  # a session file names SAE folders under its own folder as ./rel
        if str(item.get("sae", "")).startswith("./"):
            item["sae"] = str(resolve_path(item["sae"], Path(args.recipe).parent))
    for text in args.intervention:
        try:
            items += short_form_items(text, args.store)
        except (ValueError, LatentLabError) as exc:
            raise LatentLabError(f"--intervention {text!r}: {exc}") from None
    return items


def cmd_steer(args: argparse.Namespace) -> int:
    """Baseline and steered continuations of one prompt, side by side."""
    from engine.api import (
        cached_model,
        compare_generation,
        recipe_interventions,
        resolve_device,
        run_cli,
        shift_text,
    )
    recipe = _steering_recipe(args)
    adapter = cached_model(args.model)
    adapter.to(resolve_device(args.device))
    interventions = recipe_interventions(adapter, recipe)
    r = run_cli(compare_generation, device=args.device, quiet=True, adapter=adapter, prompt=args.prompt,
                interventions=interventions, max_new_tokens=args.max_new_tokens, seed=args.seed,
                sample=args.sample, temperature=args.temperature)
    print(f"baseline: {r.baseline_text!r}")
    print(f"steered:  {r.steered_text!r}")
    where = "never" if r.first_divergence < 0 else f"at new token {r.first_divergence}"
    print(f"diverges {where}; KL(steered || baseline) of the next token {r.kl:.4f}")
    print("gained: " + shift_text(r.gained[:5]))
    print("lost:   " + shift_text(r.lost[:5]))
    return 0


def cmd_probe_text(args: argparse.Namespace) -> int:
    """Which SAE latents fire on each token of a text (the browser's text probe)."""
    from engine.api import run_cli, text_latents
    from engine.errors import LatentLabError
    if (args.text is None) == (args.file is None):
        raise LatentLabError("give the text to probe with --text or --file (one of them)")
    text = args.text if args.text is not None else _read_text(args.file)
    r = run_cli(text_latents, device=args.device, quiet=True, model=args.model, hook=args.hook,
                sae_path=args.sae, text=text)
    for t, piece in enumerate(r.texts):
        latents, values = r.top(t, args.top)
        fired = ", ".join(f"{int(j)}={float(v):.3g}" for j, v in zip(latents, values, strict=True))
        print(f"{t:4d} {piece!r:>16}  {fired or '-'}")
    if r.truncated:
        print(f"(only the first {len(r.tokens)} tokens were probed)")
    return 0


def _read_text(path: str) -> str:
    from engine.errors import LatentLabError
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LatentLabError(f"--file {path}: cannot read it as UTF-8 text ({exc})") from None


def _group(flag: str, text: str, store: str):
    """A delta group from its flag: LABEL=VALUE (a value index or class name), a .json/.npy
    file of row ids, or ``rest`` (B only)."""
    import numpy as np

    from engine.api import REST, JobContext, LabelValue, store_groups
    from engine.errors import LatentLabError
    if text == REST:
        return REST
    if "=" in text:
        label, _, value = text.partition("=")
        classes = store_groups(JobContext(), store).labels
        if label not in classes:
            raise LatentLabError(f"{flag} {text!r}: the store has no label {label!r} "
                                 f"(it has {', '.join(classes) or 'none'})")
        for v, name, _ in classes[label]:
            if value in (str(v), name):
                return LabelValue(label, v)
        raise LatentLabError(f"{flag} {text!r}: label {label} has no value {value!r} "
                             f"(values: {', '.join(n for _, n, _ in classes[label][:12])})")
    path = Path(text)
    if path.suffix in (".json", ".npy") and path.is_file():
        ids = np.load(path) if path.suffix == ".npy" else np.asarray(json.loads(path.read_text()))
        return np.asarray(ids, np.int64).ravel()
    raise LatentLabError(f"{flag} {text!r}: expected LABEL=VALUE, a .json or .npy file of row ids, or 'rest'")


def cmd_delta(args: argparse.Namespace) -> int:
    """mean(A) - mean(B) at a hook point of a store, written as a steering recipe item."""
    from engine.api import SteeringRecipe, delta_item, delta_vector, run_cli
    a, b = _group("--a", args.a, args.store), _group("--b", args.b, args.store)
    d = run_cli(delta_vector, device=args.device, quiet=args.quiet, store_path=args.store, hook=args.hook, a=a, b=b)
    item = delta_item(d, args.name or f"{args.a} - {args.b}", args.a, args.b, args.strength)
    items = SteeringRecipe.load(args.out, f"--out {args.out}").dicts() if Path(args.out).is_file() else []
    SteeringRecipe.parse({"items": [*items, item]}).write(args.out)
    print(f"{args.out}: direction {item['name']!r} at {d.hook} (A {d.n_a} rows, B {d.n_b} rows, norm {d.norm:.4g}), "
          f"item {len(items) + 1} of the recipe; use it with: main.py steer --recipe {args.out}")
    return 0


def cmd_steer_predict(args: argparse.Namespace) -> int:
    """A classifier's predictions on a store's images before and after a steering recipe."""
    from engine.api import classifier_spec, run_cli, steer_predictions
    from engine.errors import LatentLabError
    recipe = _steering_recipe(args)
    if not recipe:
        raise LatentLabError("no interventions: give --recipe FILE (e.g. one `main.py delta` wrote) or --intervention")
    model = classifier_spec(args.model, getattr(args, "workspace", None), args.store) or args.model
    r = run_cli(steer_predictions, device=args.device, quiet=True, model=model, recipe=recipe,
                store=args.store, label=args.label)
    print(f"{r.model_id}: {r.n} images of {args.store}; {r.changed} change their predicted class")
    if r.label is not None:
        print(f"accuracy against {r.label}: {r.accuracy_before:.1%} -> {r.accuracy_after:.1%}")
    print(f"{'class':>12} {'before':>7} {'after':>7} {'p before':>9} {'p after':>8}")
    for c, name in enumerate(r.classes):
        print(f"{name:>12} {int(r.before[c]):7d} {int(r.after[c]):7d} {r.prob_before[c]:9.3f} {r.prob_after[c]:8.3f}")
    return 0


def _numbers(flag: str, text: str, kind: type = float) -> list:
    """A comma-separated number list of a flag; LatentLabError naming the flag when bad or empty."""
    from engine.errors import LatentLabError
    try:
        values = [kind(x) for x in _csv(text)]
    except ValueError:
        raise LatentLabError(f"{flag} {text!r}: expected comma-separated numbers") from None
    if not values:
        raise LatentLabError(f"{flag} {text!r}: give at least one number")
    return values


def _concept_words(args: argparse.Namespace, sets: dict) -> list[str]:
    """--words, else the concept file's 'words'; LatentLabError when neither gives any."""
    from engine.errors import LatentLabError
    words = _csv(args.words) if args.words else sets["words"]
    if not words:
        raise LatentLabError(f"no concept words: give --words ocean,sea or a 'words' list in {args.concept}")
    return words


def _steering_model(args: argparse.Namespace, hooks: list[str]):
    """The model on its device, with ``hooks`` checked against its hook points."""
    from engine.api import cached_model, check_hooks, resolve_device
    adapter = cached_model(args.model)
    adapter.to(resolve_device(args.device))
    check_hooks(hooks, adapter.hook_points(), adapter.model_id)
    return adapter


def _concept_item(path: str, sets: dict[str, list[str]], hook: str) -> dict:
    """A concept file as the steering recipe item the view would make of it."""
    return {"kind": "concept", "name": Path(path).stem, "hook": hook, "positive": sets["positive"],
            "negative": sets["negative"]}


def _check_out(path: str | None) -> None:
    """Fail before the work when --out cannot be written (its folder is missing)."""
    from engine.errors import LatentLabError
    if path and not Path(path).absolute().parent.is_dir():
        raise LatentLabError(f"--out {path}: the folder {Path(path).absolute().parent} does not exist")


def _write_out(path: str | None, result) -> None:
    from engine.errors import LatentLabError
    if path:
        try:
            result.save(path)
        except OSError as exc:
            raise LatentLabError(f"--out {path}: cannot write it ({exc.strerror or exc})") from None
        print(f"wrote {path}")


def cmd_sweep(args: argparse.Namespace) -> int:
    """Concept score, coherence and KL over a grid of hook points x strengths."""
    from engine.api import NEUTRAL_PROMPTS, load_concept_sets, run_cli, sweep_item
    from engine.errors import LatentLabError
    sets = load_concept_sets(args.concept)
    words, strengths = _concept_words(args, sets), _numbers("--strengths", args.strengths)
    _check_out(args.out)
    if bool(args.hooks) == bool(args.layers):
        raise LatentLabError("sweep needs hook points: give --hooks H1,H2 or --layers 3,6,9 (not both)")
    hooks = _csv(args.hooks) if args.hooks else \
        [f"blocks.{n}.hook_resid_post" for n in _numbers("--layers", args.layers, int)]
    adapter = _steering_model(args, hooks)
    r = run_cli(sweep_item, device=args.device, model=adapter, item=_concept_item(args.concept, sets, hooks[0]),
                hooks=hooks, strengths=strengths, prompts=args.prompt or list(NEUTRAL_PROMPTS), words=words,
                max_new_tokens=args.max_new_tokens, seed=args.seed)
    print(r.format())
    _write_out(args.out, r)
    return 0


def cmd_inject(args: argparse.Namespace) -> int:
    """Concept injection: does the model's answer about its own state name the injected concept?"""
    from engine.api import DEFAULT_QUESTIONS, inject_item, load_concept_sets, run_cli
    sets = load_concept_sets(args.concept)
    words, strengths = _concept_words(args, sets), _numbers("--strengths", args.strengths)
    _check_out(args.out)
    adapter = _steering_model(args, [args.hook])
    r = run_cli(inject_item, device=args.device, model=adapter, item=_concept_item(args.concept, sets, args.hook),
                strengths=strengths, words=words, questions=args.question or list(DEFAULT_QUESTIONS),
                max_new_tokens=args.max_new_tokens, seed=args.seed, from_question=args.from_question,
                sample=args.sample, temperature=args.temperature, samples=args.samples)
    print(r.format())
    _write_out(args.out, r)
    return 0


def gui_views() -> list:
    """The views the main window docks, in order (the shell itself never imports views)."""
    from views.features import FeatureBrowser
    from views.geometry import GeometryView
    from views.scatter import ScatterView
    from views.steering import SteeringView
    return [("Scatter", ScatterView), ("Features", FeatureBrowser), ("Geometry", GeometryView),
            ("Steering", SteeringView)]


def cmd_render(args: argparse.Namespace) -> int:
    from desktop_app.render import render_figure
    out = render_figure(args.figure, args.out, gui_views())
    print(f"{out}: rendered from {args.figure}")
    return 0


def cmd_gui(args: argparse.Namespace) -> int:
    from desktop_app.app import run_app
    return run_app(gui_views(), workspace=args.workspace, device=args.device,
                   quit_after=getattr(args, "quit_after", None), launched=LAUNCHED)


# ---------------------------------------------------------------------- the parser
NUMBER_LISTS = ("--strengths",)  # sweep's and inject's: a list that may start with a minus


def _glue_number_lists(argv: list[str]) -> list[str]:
    """``--strengths -8,-4,0`` as ``--strengths=-8,-4,0``: argparse reads an argument that
    starts with '-' as an option unless it is one plain negative number."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in NUMBER_LISTS and re.match(r"-\.?\d", arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def _command(sub, name: str, func, help: str, common: bool = True) -> argparse.ArgumentParser:
    """A sub-command running ``func``; ``common``: --workspace and --device may follow its name."""
    p = sub.add_parser(name, help=help)
    p.set_defaults(func=func)
    if common:
        p.add_argument("--workspace", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.add_argument("--device", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def _spec_option(p: argparse.ArgumentParser, spec, field: str, help: str | None = None) -> None:
    """--FIELD with the spec's default and choices; the spec checks the value (no type=), so a
    bad one is named as '--FIELD should be ..., not VALUE'."""
    p.add_argument("--" + field.replace("_", "-"), default=spec.default(field),
                   choices=spec.choices(field) or None, help=help)


def _capture_parser(sub) -> None:
    from engine.api import CaptureSpec as S
    c = _command(sub, "capture", cmd_capture, "capture activations into an HDF5 store")
    c.add_argument("--model", required=True, help="smollm2, hf:PATH, hf-encoder:PATH?pooling=mean, "
                   "a digits-zoo folder, file.py:factory")
    c.add_argument("--source", required=True, help="demo, digits[:train|test], FILE.txt, FILE.jsonl?field=text, FOLDER")
    c.add_argument("--hooks", required=True, help="comma-separated hook points, e.g. blocks.15.hook_resid_post")
    c.add_argument("--out", required=True, help="store file to write (.h5)")
    _spec_option(c, S, "max_tokens", "rows to capture (default: the whole source)")
    c.add_argument("--resume", action="store_true", help="continue an existing store from its committed rows")
    _spec_option(c, S, "batch_size", "windows (or images) per forward pass")
    _spec_option(c, S, "ctx_len", "tokens per window, special tokens included")
    _spec_option(c, S, "dtype", "precision of the stored rows")
    _spec_option(c, S, "model_dtype", "precision the model runs in; below float32 the store records the "
                 "cosine of the first batch's rows to the float32 model's")
    c.add_argument("--quiet", action="store_true", help="no progress bar")


def _store_info_parser(sub) -> None:
    s = _command(sub, "store-info", cmd_store_info, "validate a store and print its summary as JSON", common=False)
    s.add_argument("store")
    s.add_argument("--context", type=int, default=None, help="also print the tokens around this row")
    s.add_argument("--decode", action="store_true", help="decode the context with the store's model")


def _sae_info_parser(sub) -> None:
    s = _command(sub, "sae-info", cmd_sae_info, "print an SAE's format, architecture, sizes, k or threshold, "
                 "hook point and normalisation (any format load_sae reads)", common=False)
    s.add_argument("sae", help="an SAE folder or checkpoint (LatentLab, SAELens, sparsify, dictionary_learning, "
                   "overcomplete), or saelens:RELEASE/SAE_ID / hf:OWNER/REPO/PATH from the local HF cache")


def _hooks_parser(sub) -> None:
    h = _command(sub, "hooks", cmd_hooks, "list a model's hook points", common=False)
    h.add_argument("--model", required=True)


def _zoo_train_parser(sub) -> None:
    z = _command(sub, "zoo-train", cmd_zoo_train, "train digits-zoo models (MLP/CNN on scikit-learn digits)")
    z.add_argument("--out", required=True)
    z.add_argument("--arch", choices=("mlp", "cnn"), default="mlp")
    z.add_argument("--widths", default="64")
    z.add_argument("--depths", default="2")
    z.add_argument("--seeds", default="0")
    z.add_argument("--epochs", type=int, default=None)


def _zoo_prune_parser(sub) -> None:
    zp = _command(sub, "zoo-prune", cmd_zoo_prune, "magnitude-, random- and structured-pruned variants of a zoo model")
    zp.add_argument("--model", required=True, help="a digits-zoo model folder")
    zp.add_argument("--out", required=True)
    zp.add_argument("--methods", default="magnitude,random,structured")
    zp.add_argument("--sparsities", default="0.5,0.8,0.9")
    zp.add_argument("--seed", type=int, default=0)


def _train_sae_parser(sub) -> None:
    from engine.api import TrainSpec as S
    t = _command(sub, "train-sae", cmd_train_sae, "train a sparse autoencoder on one hook point of a store")
    t.add_argument("--store", required=True)
    t.add_argument("--hook", required=True)
    t.add_argument("--out", required=True, help="folder for the SAE (SAELens layout), its curves and metrics")
    from engine.api import architectures
    t.add_argument("--arch", default=S.default("arch"), choices=architectures(),
                   help="SAE architecture (the registry's; LATENTLAB_SAE_PLUGINS names more)")
    _spec_option(t, S, "expansion", "d_sae = expansion x d_in")
    _spec_option(t, S, "k", "latents per row (topk, batchtopk, gtopk) or steps (mp)")
    _spec_option(t, S, "batch_size")
    _spec_option(t, S, "steps", "optimiser steps (default: --epochs over the rows)")
    _spec_option(t, S, "epochs")
    _spec_option(t, S, "lr")
    _spec_option(t, S, "l1_coeff", "relu: L1 weight")
    _spec_option(t, S, "l0_coeff", "jumprelu: L0 weight")
    _spec_option(t, S, "holdout", "held-out share (or row count) for metrics")
    _spec_option(t, S, "checkpoint_every")
    _spec_option(t, S, "seed")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    _spec_option(t, S, "eval_model", "model spec for spliced-in loss (e.g. smollm2)")
    t.add_argument("--quiet", action="store_true")


def _feature_stats_parser(sub) -> None:
    from engine.api import CaptureSpec
    f = _command(sub, "feature-stats", cmd_feature_stats, "per-latent statistics of an SAE: over a store's "
                 "rows, or in one pass of the model over a source into a new store")
    f.add_argument("--store", default=None, help="a store holding the SAE's hook point")
    f.add_argument("--source", default=None, help="one pass over this source instead (with --model, --out)")
    f.add_argument("--out", default=None, help="the store the one pass writes (must not exist)")
    f.add_argument("--sae", required=True, help="an SAE folder (cfg.json + sae_weights.safetensors)")
    f.add_argument("--hook", default=None, help="default: the SAE's hook_name")
    f.add_argument("--sae-id", default=None, help="name the statistics are found by (default: the SAE folder's name)")
    f.add_argument("--model", default=None, help="the model to run (one pass), or for logit effects "
                   "(default: the store's model)")
    f.add_argument("--no-logits", action="store_true", help="skip logit effects (no model load with --store)")
    f.add_argument("--batch-size", type=int, default=None,
                   help="rows per SAE batch with --store (default 4096); windows per batch in one pass (default 8)")
    f.add_argument("--top-n", type=int, default=32)
    f.add_argument("--max-tokens", type=int, default=None, help="one pass: rows to run (default: the whole source)")
    f.add_argument("--ctx-len", type=int, default=CaptureSpec.default("ctx_len"), help="one pass: tokens per window")
    f.add_argument("--dtype", choices=CaptureSpec.choices("dtype"), default=CaptureSpec.default("dtype"),
                   help="one pass: how rows are stored (and rounded before encoding)")
    f.add_argument("--no-acts", action="store_true",
                   help="one pass: keep tokens, contexts and the SAE codes but not the activation rows")


def _demo_parser(sub) -> None:
    from engine.api import DemoSpec
    d = _command(sub, "demo", cmd_demo, "build the demo workspace headless (smollm2 over the demo corpus)")
    _spec_option(d, DemoSpec, "max_tokens")
    d.add_argument("--no-umap", action="store_true", help="PCA layouts only")


def _project_parser(sub) -> None:
    pr = _command(sub, "project", cmd_project, "PCA or UMAP layout of a store's rows or an SAE's latents")
    pr.add_argument("--store", required=True)
    pr.add_argument("--hook", required=True)
    pr.add_argument("--method", choices=("pca", "umap"), default="pca")
    pr.add_argument("--what", choices=("rows", "latents"), default="rows")
    pr.add_argument("--sae", default=None, help="SAE folder (for --what latents)")
    pr.add_argument("--max-rows", type=int, default=None, help="subsample rows (default: all)")
    pr.add_argument("--cache-dir", default=None, help="reuse layouts cached here")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--out", required=True, help=".npz with xy, ids, name")


def _compare_pruned_parser(sub) -> None:
    cp = _command(sub, "compare-pruned", cmd_compare_pruned, "loss geometry of a dense zoo model against its "
                  "pruned variants under corruptions; flips and KS tests")
    cp.add_argument("dense", help="the dense digits-zoo model folder")
    cp.add_argument("pruned", nargs="+", help="pruned variant folders (from zoo-prune)")
    cp.add_argument("--corruption", action="append", type=_corruption, default=None,
                    help="KIND:SEVERITY, repeatable: none, noise:0.3, blur:1.0, dropout:0.3 (default: all four)")
    cp.add_argument("--source", default="digits:test")
    cp.add_argument("--seed", type=int, default=0)
    cp.add_argument("--centroids", choices=("own", "dense"), default="own",
                    help="class centroids of each model's own features, or the dense model's")
    cp.add_argument("--out", required=True, help=".npz to write (load_comparison reads it)")


def _compare_parser(sub) -> None:
    cm = _command(sub, "compare", cmd_compare, "similarity of two representations (CKA, CCA, Procrustes, "
                  "RSA, mutual kNN), or a layer x layer matrix")
    cm.add_argument("a", nargs="?", help="STORE.h5[:HOOK] (with --layers: STORE.h5[:H1,H2,...], "
                    "default all); or give --a")
    cm.add_argument("b", nargs="?", help="the other side, row-aligned with a (the same store is "
                    "fine); or give --b")
    cm.add_argument("--a", dest="a_flag", default=None, help=argparse.SUPPRESS)
    cm.add_argument("--b", dest="b_flag", default=None, help=argparse.SUPPRESS)
    cm.add_argument("--measures", default="linear_cka",
                    help="comma-separated: linear_cka, rbf_cka, debiased_cka, svcca, pwcca, procrustes, "
                    "procrustes_angular, rsa_pearson, rsa_spearman, mutual_knn (cka = linear_cka); or all")
    cm.add_argument("--layers", action="store_true", help="every hook of a against every hook of b")
    cm.add_argument("--max-rows", type=int, default=None, help="subsample rows (Gram-form measures "
                    "default to 10,000)")
    cm.add_argument("--seed", type=int, default=0)
    cm.add_argument("--out", default=None, help="write the result as JSON")


def _kernel_analysis_parser(sub) -> None:
    ka = _command(sub, "kernel-analysis", cmd_kernel_analysis, "error of a label against the number of "
                  "leading kernel eigen-components (Montavon et al.)")
    ka.add_argument("--store", required=True)
    ka.add_argument("--hook", required=True)
    ka.add_argument("--label", required=True, help="a label field of the store, e.g. digit or topic")
    ka.add_argument("--components", default=None, help="e.g. 1,2,4,8,16 (default 1..100)")
    ka.add_argument("--max-rows", type=int, default=2000)
    ka.add_argument("--seed", type=int, default=0)


def _match_parser(sub) -> None:
    m = _command(sub, "match", cmd_match, "match units of two representations, or latents of two SAEs")
    m.add_argument("a", help="STORE.h5[:HOOK], or an SAE folder with --method sae")
    m.add_argument("b")
    m.add_argument("--method", choices=("hungarian", "sparse", "clusters", "sae"), default="hungarian")
    m.add_argument("--max-rows", type=int, default=20_000)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--alpha", type=float, default=0.01, help="sparse: Lasso penalty")
    m.add_argument("--max-units", type=int, default=None, help="sparse: units of A per unit of B")
    m.add_argument("--n-clusters", type=int, default=8, help="clusters: spectral clusters")
    m.add_argument("--threshold", type=float, default=0.7, help="sae: decoder cosine for a match")


def _stitch_parser(sub) -> None:
    st = _command(sub, "stitch", cmd_stitch, "fit an affine map from A's layer to B's and run B on it")
    st.add_argument("--model-a", required=True)
    st.add_argument("--hook-a", required=True)
    st.add_argument("--model-b", required=True)
    st.add_argument("--hook-b", required=True)
    st.add_argument("--train", default="digits:train", help="source to fit the map on")
    st.add_argument("--eval", default="digits:test", help="held-out source")
    st.add_argument("--ridge", type=float, default=1e-3)
    st.add_argument("--max-tokens", type=int, default=None, help="language models: tokens to fit on")
    st.add_argument("--per-position", action="store_true", help="CNNs: a 1x1-conv map (Bansal et al.)")
    st.add_argument("--finetune-steps", type=int, default=0, help="then train the map on B's task loss")


def _stitch_stores_parser(sub) -> None:
    st = _command(sub, "stitch-stores", cmd_stitch_stores, "fit an affine map from A's stored rows to B's "
                  "and score it on held-out documents (R^2; a language model B's next-token loss)")
    st.add_argument("a", help="STORE.h5:HOOK of A")
    st.add_argument("b", help="STORE.h5:HOOK of B (row-aligned with A)")
    st.add_argument("--ridge", type=float, default=1e-3)
    st.add_argument("--max-tokens", type=int, default=4096, help="held-out tokens B runs on")
    st.add_argument("--no-downstream", action="store_true", help="only the R^2; B's model is not run")


def _steer_parser(sub) -> None:
    sr = _command(sub, "steer", cmd_steer, "generate with and without interventions and compare")
    sr.add_argument("--model", required=True)
    sr.add_argument("--prompt", required=True)
    sr.add_argument("--recipe", default=None, help="a steering recipe JSON file: what a session file saves "
                    "under 'steering' (or the session file itself); --intervention items follow its items")
    sr.add_argument("--intervention", action="append", default=[], help="repeatable: "
                    "add:HOOK:ALPHA:concept=SETS.json (a JSON object with 'positive' and 'negative' "
                    "text lists), add:HOOK:ALPHA:latent=SAE_DIR#J, clamp:HOOK:SAE_DIR:J=V[,J=V], "
                    "ablate:HOOK:SAE_DIR:J[,J], mean-ablate:HOOK:SAE_DIR:J[,J] (needs --store)")
    sr.add_argument("--store", help="store whose rows give the latents' means for mean-ablate")
    sr.add_argument("--max-new-tokens", type=int, default=20)
    sr.add_argument("--seed", type=int, default=0)
    sr.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    sr.add_argument("--temperature", type=float, default=1.0)


def _probe_text_parser(sub) -> None:
    pt = _command(sub, "probe-text", cmd_probe_text, "which SAE latents fire on each token of a text")
    pt.add_argument("--model", default="smollm2")
    pt.add_argument("--hook", required=True)
    pt.add_argument("--sae", required=True, help="an SAE folder (any format load_sae reads)")
    pt.add_argument("--text", help="the text to probe")
    pt.add_argument("--file", help="a UTF-8 text file to probe instead")
    pt.add_argument("--top", type=int, default=5, help="latents shown per token")


def _delta_parser(sub) -> None:
    de = _command(sub, "delta", cmd_delta, "a delta vector mean(A) - mean(B) of a store's rows, "
                  "added to a steering recipe file")
    de.add_argument("--store", required=True)
    de.add_argument("--hook", required=True)
    de.add_argument("--a", required=True, help="group A: LABEL=VALUE (value index or class name) or a "
                    ".json/.npy file of row ids")
    de.add_argument("--b", default="rest", help="group B: like --a, or 'rest' (every row not in A; default)")
    de.add_argument("--name", default=None, help="the item's name (default: 'A - B')")
    de.add_argument("--strength", type=float, default=1.0, help="1 moves B's mean onto A's")
    de.add_argument("--out", required=True, help="the recipe JSON to write (an existing one gets the item appended)")
    de.add_argument("--quiet", action="store_true")


def _steer_predict_parser(sub) -> None:
    sp = _command(sub, "steer-predict", cmd_steer_predict, "a classifier's predictions on a store's images "
                  "with and without a steering recipe")
    sp.add_argument("--model", required=True, help="a digits-zoo folder (or the store's digits-zoo:NAME)")
    sp.add_argument("--store", required=True, help="a store of the model's images")
    sp.add_argument("--recipe", default=None, help="a steering recipe JSON file (e.g. from `delta`)")
    sp.add_argument("--intervention", action="append", default=[], help="repeatable, as for steer")
    sp.add_argument("--label", default=None, help="the label accuracy is measured against (default: the first)")


CONCEPT_HELP = ("SETS.json: {\"positive\": [texts], \"negative\": [texts], optional \"words\": [concept "
                "words]}; the direction is mean(positive) - mean(negative) at each hook")


def _sweep_parser(sub) -> None:
    sw = _command(sub, "sweep", cmd_sweep, "steer along a concept at several hooks x strengths: concept "
                  "score, coherence, KL")
    sw.add_argument("--model", required=True)
    sw.add_argument("--concept", required=True, help=CONCEPT_HELP)
    sw.add_argument("--hooks", default=None, help="comma-separated hook points")
    sw.add_argument("--layers", default=None, help="e.g. 3,6,9: blocks.L.hook_resid_post")
    sw.add_argument("--strengths", default="-8,-4,0,4,8", help="comma-separated, e.g. -8,-4,0,4,8")
    sw.add_argument("--prompt", action="append", default=[], help="repeatable (default: a few neutral prompts)")
    sw.add_argument("--words", default=None, help="concept words for the score, e.g. ocean,sea "
                    "(default: the file's 'words')")
    sw.add_argument("--max-new-tokens", type=int, default=10)
    sw.add_argument("--seed", type=int, default=0)
    sw.add_argument("--out", default=None, help="write the result as JSON")


def _inject_parser(sub) -> None:
    ij = _command(sub, "inject", cmd_inject, "concept injection: ask the model about its own state while a "
                  "concept is added, at several strengths (0 = control)")
    ij.add_argument("--model", required=True)
    ij.add_argument("--concept", required=True, help=CONCEPT_HELP)
    ij.add_argument("--hook", required=True)
    ij.add_argument("--strengths", default="0,4,8,16", help="comma-separated; include 0 as the control")
    ij.add_argument("--question", action="append", default=[], help="repeatable (default: three "
                    "questions about an injected thought)")
    ij.add_argument("--words", default=None, help="words that count as naming the concept, e.g. "
                    "ocean,sea,waves (default: the file's 'words')")
    ij.add_argument("--from-question", action="store_true", help="inject from the question on, not "
                    "over the preamble too")
    ij.add_argument("--max-new-tokens", type=int, default=40)
    ij.add_argument("--seed", type=int, default=0)
    ij.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    ij.add_argument("--temperature", type=float, default=1.0)
    ij.add_argument("--samples", type=int, default=1, help="answers per question and strength (seed, seed+1, ...)")
    ij.add_argument("--out", default=None, help="write the result as JSON")


def _render_parser(sub) -> None:
    r = _command(sub, "render", cmd_render, "draw an exported figure again, headless, from its F.json "
                 "(refused when an input is missing or changed)")
    r.add_argument("figure", help="the figure's record (F.json, written beside every export)")
    r.add_argument("--out", required=True, help="the image to write: .png, .svg or .pdf")


def _gui_parser(sub) -> None:
    g = _command(sub, "gui", cmd_gui, "open the app (the default with no sub-command)")
    g.add_argument("--quit-after", type=float, default=None, help=argparse.SUPPRESS)


SUBCOMMANDS = (_capture_parser, _store_info_parser, _sae_info_parser, _hooks_parser, _zoo_train_parser, _zoo_prune_parser,
               _train_sae_parser, _feature_stats_parser, _demo_parser, _project_parser, _compare_pruned_parser,
               _compare_parser, _kernel_analysis_parser, _match_parser, _stitch_parser, _stitch_stores_parser,
               _steer_parser, _probe_text_parser, _delta_parser, _steer_predict_parser,
               _sweep_parser, _inject_parser, _render_parser, _gui_parser)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="latentlab", description=__doc__)
    p.add_argument("--workspace", help="workspace folder (default: the demo workspace)")
    p.add_argument("--device", default="auto", help="torch device: auto (GPU if present), cpu, cuda, cuda:1")
    sub = p.add_subparsers(dest="command")
    for add in SUBCOMMANDS:
        add(sub)
    return p


def _start_demo_first_slice(argv: list[str]) -> None:
    """On a plain launch (the app on the demo workspace), start capturing the demo's first
    rows in a process now, before the parser's and the window's imports (seconds), so that
    the model loads on the second core meanwhile (engine.startup)."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--device", default="auto")
    known, rest = early.parse_known_args(argv)
    if not rest:  # no sub-command and no --workspace
        from engine.startup import start_first_slice
        start_first_slice(device=known.device)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _start_demo_first_slice(argv)
    args = build_parser().parse_args(_glue_number_lists(argv))
    from engine.api import Cancelled
    from engine.errors import LatentLabError
    try:
        if args.command is None:
            args.func = cmd_gui
        return args.func(args)
    except LatentLabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (Cancelled, KeyboardInterrupt):
        print("cancelled: committed rows are kept; rerun with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
