"""The command line: the only place that parses arguments, prints, and maps errors
to exit codes (0 built and passed, 1 built but a gate failed or a device or registry could
not be reached, 2 bad input/usage or a bundle refused, 3 internal error: one line naming
stage and target, the traceback in a log in --out)."""
from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import NoReturn

import click

from . import __version__
from .errors import EdgepackError, UsageError, stage_errors

EXAMPLES_BUILD = """
\b
Examples:
  edgepack build --target tflite-int8                       # the embedded default
  edgepack build -t tflite-int8 --model net.py:make_model --weights net.pt --data data.npz
  edgepack build -t tflite-int8 --set quantize.io=float32 --set validate.runs=50
  edgepack build -t tflite-int8 --dry-run                   # resolved settings + stage plan
  edgepack build -t tflite-int8 --sign-key private.pem      # model.sig in the bundle
"""


def _err(msg: str) -> None:
    click.echo(f"edgepack: error: {msg}", err=True)


def _message(e: EdgepackError, out: Path) -> str:
    from .errors import error_line

    return error_line(e, out)


class Printer:
    """Stage lines always; a live spinner only when stdout is a terminal."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=False)
        self.tty = sys.stdout.isatty()
        self.status = None

    def stage_started(self, name: str) -> None:
        if self.tty:
            self.status = self.console.status(f"[bold]{name}[/] …")
            self.status.start()

    def stage_done(self, rec) -> None:
        if self.status:
            self.status.stop()
            self.status = None
        click.echo(stage_line(rec))


def stage_line(rec) -> str:
    """A finished stage (StageRecord): status, name, seconds, size and metric where it has them."""
    m = rec.metrics
    bits = [f"{rec.status:>7}", f"{rec.name:<10}"]
    if rec.status != "skipped":
        bits.append(f"{rec.seconds:7.2f}s")
    if m.get("size_bytes"):
        bits.append(f"{m['size_bytes'] / 1024:,.1f} KiB")
    acc = m.get("accuracy")
    metric = m.get("metric", "top1")
    if isinstance(acc, dict):
        acc, metric = acc.get("value"), acc.get("metric", metric)
    if acc is not None:
        bits.append(f"{metric} {acc:.2f}")
    return "  ".join(bits)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgepack")
def main() -> None:
    """edgepack: distill, prune, quantize, convert and validate a PyTorch model into a
    ready-to-ship edge bundle.

    \b
    Examples:
      edgepack build --target tflite-int8
      edgepack targets
      edgepack inspect out/digits-resnet-tflite-int8.zip
      edgepack push out/digits-resnet-tflite-int8.zip localhost:5000/digits:1.0 --insecure
    """


_executor_options = [
    click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                 help="local: in this process, one build after another; ray: concurrent Ray tasks."),
    click.option("--address", help="Join this Ray cluster (host:port, or auto) instead of starting a local Ray."),
    click.option("--workers", type=click.IntRange(1), help="A local Ray's CPUs (default: every core)."),
    click.option("--cache-dir", "cache_dir", type=click.Path(path_type=Path),
                 help="The stage cache (default: OUT/.edgepack-cache); on a cluster, a folder every node reads."),
]


def executor_options(fn):
    for option in reversed(_executor_options):
        fn = option(fn)
    return fn


@main.command(epilog=EXAMPLES_BUILD)
@click.option("--target", "-t", "target_names", required=True, multiple=True,
              help="Target profile (see `edgepack targets`); repeat it, or say `all`, for several.")
@click.option("--model", help="FILE.py:FACTORY, package.module:FACTORY or a torch.export .pt2 (default: the embedded digits ResNet).")
@click.option("--weights", type=click.Path(), help="state_dict for the factory's model (torch.load weights_only).")
@click.option("--data", type=click.Path(), help=".npz (x, y), a folder with calibration.npz + evaluation.npz, or an image folder.")
@click.option("--train-data", type=click.Path(), help=".npz (x, y) for the stages that train (distill, prune fine-tuning).")
@click.option("--student", help="FILE.py:FACTORY of the student to distill into (default: derived from the teacher).")
@click.option("--metric", help="FILE.py:FUNCTION: fn(outputs, targets) -> {name: value}, the metric that gates (task.metric).")
@click.option("--allow-overlap", is_flag=True, help="Accept samples shared by training/calibration and evaluation data.")
@click.option("--config", "config", type=click.Path(path_type=Path), help="Project file (edgepack.toml) overriding the profile.")
@click.option("--out", type=click.Path(path_type=Path), help="Output folder (default: out).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override one setting (repeatable).")
@click.option("--device", "devices", multiple=True, help="Validate on this device (repeatable; default: the profile's).")
@click.option("--no-cache", is_flag=True, help="Ignore cached stage outputs and run every stage.")
@click.option("--dry-run", is_flag=True, help="Print the resolved configuration and the stage plan; run nothing.")
@click.option("--sign-key", type=click.Path(path_type=Path), metavar="PRIVATE.pem",
              help="Sign the bundle with this EC private key (bundle.sign_key): model.sig beside manifest.json.")
@executor_options
def build(target_names, model, weights, data, train_data, student, metric, allow_overlap, config, out, overrides,
          devices, no_cache, dry_run, sign_key, executor, address, workers, cache_dir) -> None:
    """Build, validate and bundle a model for one target, or several (one bundle each plus a
    comparison report; the exit code is the worst of them)."""
    from .build import BuildRequest, prepare
    from .targets.base import expand_targets

    try:
        names = expand_targets(target_names)
    except EdgepackError as e:
        _err(str(e))
        sys.exit(e.exit_code)
    _check_executor(executor, address, workers)
    reqs = [BuildRequest(target=t, model=model, weights=weights, data=data, train_data=train_data, student=student,
                         config=config, out=out, overrides=tuple(overrides), devices=tuple(devices),
                         use_cache=not no_cache, metric=metric, allow_overlap=allow_overlap, sign_key=sign_key,
                         cache_dir=cache_dir)
            for t in names]
    prepared, failed = [], []
    for req in reqs:
        try:
            with stage_errors("prepare", req.target):
                prepared.append(prepare(req))
        except EdgepackError as e:
            msg = _message(e, Path(req.out or "out"))
            if len(reqs) == 1:
                _err(msg)
                sys.exit(e.exit_code)
            failed.append({"target": req.target, "error": msg, "exit_code": e.exit_code})
            _err(f"{req.target}: {msg}")
    if not prepared:
        sys.exit(max(f["exit_code"] for f in failed))
    if dry_run:
        for p in prepared:
            click.echo(json.dumps(p.settings.resolved(), indent=2))
            click.echo(f"recipe hash: {p.settings.recipe_hash}")
            click.echo("stage plan: " + " → ".join(n if on else f"({n}: off)" for n, on in describe(p)) + " → bundle")
        return
    if executor == "ray":
        results = list(failed) + _build_on_executor(reqs, prepared, executor, address, workers)
    elif len(reqs) == 1:
        sys.exit(_build_one(prepared[0]))
    else:
        results = list(failed)
        for p in prepared:
            code, report, bundle = _build_one(p, keep_going=True)
            results.append({"target": p.target.name, "exit_code": code, "report": report, "bundle": bundle,
                            "error": None if report else bundle})
    if len(results) == 1:
        sys.exit(results[0]["exit_code"])
    from .report.comparison import write_comparison

    out_dir = prepared[0].out
    md = write_comparison(out_dir, results)
    worst = max(r["exit_code"] for r in results)
    summary = ", ".join(f"{r['target']}: exit {r['exit_code']}" for r in results)
    click.echo(f"comparison: {md}  ({summary})")
    sys.exit(worst)


def _build_on_executor(reqs, prepared, executor: str, address: str | None, workers: int | None) -> list[dict]:
    """Every prepared target as one task: they run concurrently, and the stages they share
    (distill, prune) are made once, by whichever build gets there first; the others wait on
    the cache entry's lock and read it. A line per target as each finishes."""
    import dataclasses

    from .build import build_detached
    from .executors import make_executor

    by_target = {p.target.name: p for p in prepared}
    todo = [dataclasses.replace(r, out=by_target[r.target].out.resolve(), cache_dir=by_target[r.target].cache_root.resolve())
            for r in reqs if r.target in by_target]
    results = []
    try:
        with make_executor(executor, address=address, workers=workers,
                           lock_dir=todo[0].cache_dir / ".locks") as ex:
            click.echo(f"edgepack {__version__}: {len(todo)} targets on {ex.kind} ({ex.workers} workers): "
                       + ", ".join(r.target for r in todo))
            for i, done in ex.map_unordered(build_detached, todo):
                results.append(_print_detached(todo[i].target, done))
    except EdgepackError as e:
        _fail(e)
    return results


def _print_detached(target: str, done) -> dict:
    """A finished build's lines on the driver: its stages, its bundle or its error."""
    from .executors import ExecutorError

    if isinstance(done, ExecutorError):
        _err(f"{target}: {done}")
        return {"target": target, "exit_code": done.exit_code, "report": None, "bundle": None, "error": str(done)}
    from .pipeline import StageRecord

    for rec in done.get("records", []):
        click.echo(f"{target:<15}  {stage_line(StageRecord(**rec))}")
    where = f"[{done['node']}:{done['pid']}, {done['seconds']:.0f} s]"
    if done["error"]:
        _err(f"{target}: {done['error'].splitlines()[0]} {where}")
    else:
        click.echo(f"{target}: bundle {done['bundle']}  {'passed' if done['exit_code'] == 0 else 'a gate failed'} {where}")
    return {"target": target, "exit_code": done["exit_code"], "report": done.get("report"),
            "bundle": done.get("bundle") or done["error"], "error": done["error"]}


def _check_executor(executor: str, address: str | None, workers: int | None) -> None:
    if executor == "local" and (address or workers):
        _err(f"{'--address' if address else '--workers'} is for Ray: add --executor ray")
        sys.exit(2)
    if address and workers:
        _err("--workers sizes a local Ray; a cluster at --address has the CPUs its nodes declared")
        sys.exit(2)


EXAMPLES_SEARCH = """
\b
Examples:
  edgepack search --target tflite-int8 --device host              # the embedded default
  edgepack search -t tflite-int8 --budget-ms 0.5 --max-size-kb 100 --pick smallest
  edgepack search -t executorch-arm --device qemu-aarch64 --trials 24 --time-budget 1800
  edgepack search -t tflite-int8 --executor ray --address 10.0.0.5:6379 --cache-dir /shared/edgepack-cache
  edgepack build -t tflite-int8 --config search/edgepack.toml     # build the pick
"""


@main.command(epilog=EXAMPLES_SEARCH)
@click.option("--target", "-t", "target_name", required=True, help="Target profile (see `edgepack targets`).")
@click.option("--device", "devices", multiple=True, help="Measure on this device (repeatable; default: the profile's).")
@click.option("--budget-ms", type=click.FloatRange(min=0, min_open=True), help="Feasible only with p50 at most this on every device.")
@click.option("--max-size-kb", type=click.FloatRange(min=0, min_open=True), help="Feasible only with a model file at most this.")
@click.option("--trials", type=click.IntRange(1), help="Builds in all, the profile's own recipe first (default: search.trials).")
@click.option("--time-budget", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
              help="Ask for no new batch of trials after this many seconds (the running batch finishes).")
@click.option("--pick", type=click.Choice(["fastest", "smallest", "balanced"]), help="Which front member to pick (default: search.pick).")
@click.option("--sampler", type=click.Choice(["tpe", "nsga2", "random"]), help="Optuna sampler (default: search.sampler).")
@click.option("--seed", type=int, help="The sampler's seed (default: search.seed).")
@click.option("--model", help="FILE.py:FACTORY, package.module:FACTORY or a torch.export .pt2 (default: the embedded digits ResNet).")
@click.option("--weights", type=click.Path(), help="state_dict for the factory's model.")
@click.option("--data", type=click.Path(), help=".npz, a folder with calibration.npz + evaluation.npz, or an image folder.")
@click.option("--train-data", type=click.Path(), help=".npz for the stages that train.")
@click.option("--metric", help="FILE.py:FUNCTION, the metric that gates (task.metric).")
@click.option("--config", "config", type=click.Path(path_type=Path), help="Project file (edgepack.toml); its [search] section too.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("search"), show_default=True,
              help="search.json/.md/.png, the picked edgepack.toml and every trial's bundle (trials/NNN).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override one setting for every trial.")
@click.option("--cpus-per-trial", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="CPUs each trial asks of the executor.")
@executor_options
def search(target_name, devices, budget_ms, max_size_kb, trials, time_budget, pick, sampler, seed, model, weights, data,
           train_data, metric, config, out, overrides, cpus_per_trial, executor, address, workers,
           cache_dir) -> None:
    """Search recipes (student width, prune ratio, quantization scheme, ... as [search.space]
    lists) for the fastest bundle within the budget, each trial a real, cached build measured
    on the devices. Writes search.json, search.md, search.png (the Pareto front of metric, size
    and p50 per device, the profile's own recipe marked) and the pick as edgepack.toml.

    Exit 0 with a pick; 1 when no trial met the budget (the reports are still written) or a
    cluster or device could not be reached; 2 on bad input, before any trial runs.
    """
    from .build import BuildRequest
    from .executors import Resources, make_executor
    from .search.report import write_search_report
    from .search.study import SearchRequest, run_search

    _check_executor(executor, address, workers)
    build_req = BuildRequest(target=target_name, model=model, weights=weights, data=data, train_data=train_data,
                             config=config, out=out.resolve(), overrides=tuple(overrides), devices=tuple(devices),
                             metric=metric, cache_dir=cache_dir.resolve() if cache_dir else None)
    req = SearchRequest(build_req, trials=trials, time_budget_s=time_budget, pick=pick, sampler=sampler, seed=seed,
                        budget_ms=budget_ms, max_size_kb=max_size_kb,
                        resources=Resources(cpus=cpus_per_trial))
    cache = (cache_dir or out / ".edgepack-cache").resolve()
    try:
        with make_executor(executor, address=address, workers=workers, lock_dir=cache / ".locks") as ex:
            doc = run_search(req, ex, log=click.echo)
    except EdgepackError as e:
        _err(_message(e, out))
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        _err("interrupted; finished trials are in the cache")
        sys.exit(130)
    paths = write_search_report(out, doc)
    for line in doc["summary"]:
        click.echo(line, err=line.startswith("WARNING"))
    click.echo(f"report: {paths['md']}, {paths['png']}, {paths['json']}")
    if "toml" not in paths:
        _err(f"no trial met the budget: see {paths['md']}")
        sys.exit(1)
    click.echo(f"picked recipe: {paths['toml']}  (edgepack build --target {target_name} --config {paths['toml']})")


def describe(p):
    from .build import describe_plan

    return describe_plan(p)


def _build_one(prepared, keep_going: bool = False):
    """Run one prepared build and print its summary. Returns the exit code, or with
    keep_going (several targets) (exit code, report or None, bundle path or error)."""
    from .build import run_build

    printer = Printer()
    ctx = prepared.ctx
    click.echo(f"edgepack {__version__}: {ctx.teacher.name} → {prepared.target.name} ({ctx.task.kind}: "
               f"{ctx.task.metric}), out: {prepared.out}")
    for note in ctx.data.notes:
        click.echo(f"edgepack: note: {note}", err=True)
    try:
        with stage_errors("build", prepared.target.name):
            outcome = run_build(prepared, use_cache=prepared.use_cache, on_stage=printer.stage_done)
    except EdgepackError as e:
        msg = _message(e, prepared.out)
        _err(f"{prepared.target.name}: {msg}" if keep_going else msg)
        return (e.exit_code, None, msg) if keep_going else e.exit_code
    except KeyboardInterrupt:
        _err("interrupted; earlier outputs are intact")
        sys.exit(130)
    r = outcome.report
    acc = r["accuracy"]
    click.echo(f"bundle: {outcome.zip}  ({outcome.tree}/)")
    if outcome.signed_by:
        click.echo(f"signed: model.sig (key {outcome.signed_by})")
    if acc.get("value") is not None:
        from .report.markdown import gate_sentence

        click.echo(gate_sentence(acc).replace("**", ""))
    if r["ratios"].get("size"):
        lat = ", ".join(f"{k} {v:.2f}x" for k, v in r["ratios"]["latency_p50"].items())
        click.echo(f"vs FP32 reference: {r['ratios']['size']:.2f}x smaller; p50 latency {lat}")
    for warning in r.get("warnings", []):
        click.echo(f"edgepack: warning: {warning}", err=True)
    code = 0
    if not outcome.passed:
        # The validate stage's notes are the gate failures; other stages' notes are only information.
        validate = next((s for s in r["stages"] if s["name"] == "validate"), {})
        for note in validate.get("notes", []):
            _err(note)
        _err(f"{prepared.target.name}: a gate failed: the bundle and report say why")
        code = 1
    else:
        click.echo("passed")
    return (code, r, str(outcome.zip)) if keep_going else code


@main.command()
def targets() -> None:
    """List target profiles and whether each toolchain is installed (without importing it).

    \b
    Example:
      edgepack targets
      # tflite-int8      tflite    ai-edge-litert     ready
    """
    from .config import PROFILES_DIR
    from .targets.base import all_targets

    adapters = all_targets()
    for path in sorted(PROFILES_DIR.glob("*.toml")):
        cls = adapters.get(path.stem)
        if cls is None:
            click.echo(f"{path.stem:<16} no adapter")
            continue
        missing = cls.missing_packages()
        state = "ready" if not missing else "missing " + ", ".join(missing)
        click.echo(f"{path.stem:<16} {cls.format:<9} {cls.runtime:<18} {state}")


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def inspect(bundle: Path, as_json: bool) -> None:
    """Print a bundle's manifest and check the sha256 of every file (exit 2 if one differs).

    \b
    Example:
      edgepack inspect out/digits-resnet-tflite-int8.zip
    """
    from .bundle import inspect_bundle

    try:
        manifest, checks = inspect_bundle(bundle)
    except UsageError as e:
        _err(str(e))
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
    else:
        click.echo(f"{manifest.get('name')}  target {manifest.get('target')}  format {manifest.get('format')}  "
                   f"scheme {manifest.get('scheme')}")
        rt = manifest.get("runtime", {})
        click.echo(f"runtime {rt.get('name')} >= {rt.get('min_version')}")
        for kind in ("inputs", "outputs"):
            for t in manifest.get(kind, []):
                click.echo(f"  {kind[:-1]:<6} {t.get('name'):<24} {t.get('dtype'):<8} {t.get('shape')}  "
                           f"{t.get('layout', '')}  scale {t.get('scale')} zero_point {t.get('zero_point')}")
        prov = manifest.get("provenance")
        if prov:
            click.echo(f"provenance: edgepack {prov['edgepack_version']}, {prov['profile']}, "
                       f"recipe {prov['recipe_hash'][:12]}, calibration {prov['calibration_data_sha256'][:12]}, "
                       f"{prov['created_at']}")
    bad = [f for f, ok in checks if not ok]
    for f, ok in checks:
        click.echo(f"  {'ok' if ok else 'CHANGED':<8} {f}", err=not ok)
    if bad:
        _err(f"{bundle}: {', '.join(bad)} changed since the bundle was made (sha256 mismatch)")
        sys.exit(2)
    click.echo(f"all {len(checks)} files match their sha256")
    if manifest.get("files") and _has_signature(bundle):
        click.echo("signed: model.sig (check it: edgepack verify BUNDLE --key PUBLIC.pem)")


def _has_signature(bundle: Path) -> bool:
    from .bundle import SIGNATURE, bundle_tree

    with bundle_tree(bundle) as tree:
        return (tree / SIGNATURE).is_file()


# -- shipping: sign, verify, push, pull, ls ---------------------------------------------

def _fail(e: EdgepackError) -> NoReturn:
    _err(str(e))
    sys.exit(e.exit_code)


def _kib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:,.1f} KiB"


_registry_options = [
    click.option("--insecure", is_flag=True, help="Plain HTTP, for a registry on this machine only (localhost, 127.0.0.1)."),
    click.option("--ca-cert", type=click.Path(path_type=Path), envvar="EDGEPACK_REGISTRY_CA",
                 help="Trust this certificate (or CA) for the registry's TLS [env EDGEPACK_REGISTRY_CA]."),
]


def registry_options(fn):
    for option in reversed(_registry_options):
        fn = option(fn)
    return fn


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--key", "key", required=True, type=click.Path(path_type=Path), metavar="PRIVATE.pem",
              help="PEM elliptic-curve private key (P-256, P-384 or P-521).")
def sign(bundle: Path, key: Path) -> None:
    """Sign a bundle (tree and zip) with OpenSSF model-signing and a local key: model.sig
    beside manifest.json covers every file. Nothing goes over the network.

    \b
    Example:
      openssl ecparam -name prime256v1 -genkey -noout -out private.pem
      openssl ec -in private.pem -pubout -out public.pem
      edgepack sign out/digits-resnet-tflite-int8.zip --key private.pem
    """
    from .shipping.signing import sign_bundle

    try:
        signed = sign_bundle(bundle, key)
    except EdgepackError as e:
        _fail(e)
    click.echo(f"signed manifest.json and the {signed.files} files it lists with key {signed.fingerprint}: "
               f"{signed.tree}/model.sig")
    click.echo(f"bundle: {signed.zip}  ({signed.tree}/)")


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("ref")
@click.option("--version", "version", help="Version for the <target>-<version> tag (default: REF's tag).")
@registry_options
def push(bundle: Path, ref: str, version: str | None, insecure: bool, ca_cert: Path | None) -> None:
    """Publish a bundle as an OCI artifact (through oras) under REF's tag, the target name
    and <target>-<version>; print its digest. REF is host:port/repo:tag, or file://PATH:tag
    for an OCI image layout folder. Credentials: $EDGEPACK_REGISTRY_USERNAME and
    $EDGEPACK_REGISTRY_PASSWORD, else the docker config file.

    \b
    Example:
      edgepack push out/digits-resnet-tflite-int8.zip localhost:5000/digits:1.0 --insecure
    """
    from .shipping.push import push_bundle

    try:
        pushed = push_bundle(bundle, ref, version=version, insecure=insecure, ca_cert=ca_cert)
    except EdgepackError as e:
        _fail(e)
    click.echo(f"pushed {pushed.name} ({pushed.files} files, {'signed' if pushed.signed else 'UNSIGNED'}) "
               f"to {pushed.ref.repo_text}")
    click.echo(f"tags: {', '.join(pushed.tags)}")
    click.echo(f"digest: {pushed.digest}")


@main.command()
@click.argument("ref")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Folder the bundle lands in.")
@click.option("--key", "key", type=click.Path(path_type=Path), envvar="EDGEPACK_PUBLIC_KEY", metavar="PUBLIC.pem",
              help="Public key the bundle must be signed with [env EDGEPACK_PUBLIC_KEY].")
@click.option("--allow-unsigned", is_flag=True, help="Accept a bundle without a signature (hashes are still checked).")
@registry_options
def pull(ref: str, out: Path, key: Path | None, allow_unsigned: bool, insecure: bool, ca_cert: Path | None) -> None:
    """Download a bundle by tag or digest, check every blob digest, every sha256 in its
    manifest and its signature in a staging folder, then let it land in --out as a tree and
    a zip. Refused (exit 2, naming the file or key; --out untouched): a changed file, a
    missing or foreign signature, a layer name that would leave --out. Registry
    unreachable: exit 1.

    \b
    Examples:
      edgepack pull localhost:5000/digits:tflite-int8 --out bundles --key public.pem --insecure
      edgepack pull localhost:5000/digits@sha256:<digest> --out bundles --key public.pem --insecure
    """
    from .shipping.pull import pull_bundle

    try:
        pulled = pull_bundle(ref, out, public_key=key, allow_unsigned=allow_unsigned, insecure=insecure,
                             ca_cert=ca_cert)
    except EdgepackError as e:
        _fail(e)
    v = pulled.integrity
    click.echo(f"pulled {pulled.ref} ({pulled.digest})")
    click.echo(f"  {pulled.blobs} blobs match their digests; {len(v.files)} files match manifest.json's sha256")
    click.echo("  signature: " + {"valid": f"valid, key {v.signer}", "unsigned": "none (--allow-unsigned)",
                                   "not checked": "not checked (--allow-unsigned, no --key)"}.get(v.signature, v.signature))
    click.echo(f"bundle: {pulled.zip}  ({pulled.tree}/)")


@main.command("ls")
@click.argument("repository")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@registry_options
def ls_command(repository: str, as_json: bool, insecure: bool, ca_cert: Path | None) -> None:
    """List a repository's tags with target, metric, size and p50 from the bundles'
    annotations (nothing is downloaded).

    \b
    Example:
      edgepack ls localhost:5000/digits --insecure
    """
    from .shipping.listing import list_bundles

    try:
        rows = list_bundles(repository, insecure=insecure, ca_cert=ca_cert)
    except EdgepackError as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"{repository}: no tags")
        return
    click.echo(f"{'TAG':<24} {'TARGET':<15} {'METRIC':<16} {'SIZE':>11}  {'P50':<22} {'SIGNED':<6}  DIGEST")
    for r in rows:
        metric = "-" if r["value"] is None else f"{r['metric']} {r['value']:.4g}{(' ' + r['unit']) if r['unit'] else ''}"
        p50 = ", ".join(f"{k} {v:.3g} ms" for k, v in r["p50_ms"].items()) or "-"
        click.echo(f"{r['tag']:<24} {(r['target'] or '(not a bundle)'):<15} {metric:<16} {_kib(r['size_bytes']):>11}  "
                   f"{p50:<22} {'yes' if r['signed'] else 'no':<6}  {r['digest'][:19]}")


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--key", "key", type=click.Path(path_type=Path), envvar="EDGEPACK_PUBLIC_KEY", metavar="PUBLIC.pem",
              help="Check the signature with this public key [env EDGEPACK_PUBLIC_KEY].")
@click.option("--device", "devices", multiple=True, help="Also run the self-check on this device (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify(bundle: Path, key: Path | None, devices, as_json: bool) -> None:
    """Check a bundle's file hashes, with --key its signature, and on each --device its
    outputs on reference.npz.

    Exit 2 when a file differs from its manifest sha256, or (with --key) the bundle is not
    signed or signed by another key, naming the file or the key; exit 1 when a device
    cannot run the bundle or its outputs stray from the expected ones beyond the bundle's
    tolerance.

    \b
    Examples:
      edgepack verify out/digits-resnet-tflite-int8.zip --key public.pem
      edgepack verify out/digits-resnet-tflite-int8.zip --device qemu-aarch64
    """
    from .verify import verify_bundle

    try:
        result = verify_bundle(bundle, list(devices), public_key=key,
                               log=(lambda _: None) if as_json else click.echo)
    except EdgepackError as e:
        _err(str(e))
        sys.exit(e.exit_code)
    if as_json:
        click.echo(json.dumps(result, indent=1, default=str))
    for r in result["devices"]:
        if r["self_check"] != "pass":
            from .selfcheck import describe

            _err(f"{bundle} on {r['device']}: " + (r.get("error") or f"self-check {describe(r['detail'])}"))
    sys.exit(0 if result["passed"] else 1)


@main.group()
def device() -> None:
    """Devices the harness can run bundles on (devices/*.toml).

    \b
    Examples:
      edgepack device list
      edgepack device setup qemu-aarch64
    """


@device.command("list")
def device_list() -> None:
    """Show every device and whether it is ready.

    \b
    Example:
      edgepack device list
      # qemu-aarch64     qemu   aarch64  not ready: ... run `edgepack device setup qemu-aarch64`
    """
    from .devices import list_devices

    try:
        devices = list_devices()
    except EdgepackError as e:
        _err(str(e))
        sys.exit(e.exit_code)
    for dev, reason in devices:
        state = "ready" if reason is None else f"not ready: {reason}"
        arch = dev.arch or (platform.machine() if dev.transport == "local" else "?")
        click.echo(f"{dev.name:<16} {dev.transport:<6} {arch:<8} {state}")


@device.command("setup")
@click.argument("name")
def device_setup(name: str) -> None:
    """Prepare a device once (qemu-aarch64: build and cache the arm64 root).

    \b
    Example:
      edgepack device setup qemu-aarch64     # ~260 MB in ~/.cache/edgepack ($EDGEPACK_QEMU_ROOT)
    """
    from .devices import load_device
    from .devices.transport import Transport

    try:
        dev = load_device(name)
        Transport.for_device(dev).setup(lambda msg: click.echo(f"  {msg}"))
        reason = Transport.for_device(dev).check()
    except EdgepackError as e:
        _err(str(e))
        sys.exit(e.exit_code)
    if reason:
        _err(f"device {name!r} is still not ready: {reason}")
        sys.exit(1)
    click.echo(f"{name}: ready")


@main.command()
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--device", "devices", multiple=True, default=("host",), show_default=True,
              help="Device to run on (repeatable).")
@click.option("--data", type=click.Path(), help="Inputs for on-device accuracy (default: the build's evaluation split).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench"), show_default=True)
@click.option("--warmup", type=click.IntRange(0), default=20, show_default=True)
@click.option("--runs", type=click.IntRange(1), default=200, show_default=True)
@click.option("--threads", type=click.IntRange(1), default=None, help="Default: each device's own setting.")
@click.option("--profile", type=click.IntRange(0), default=20, show_default=True,
              help="Runs with the runtime's per-operator profiler after timing (0: none).")
def bench(bundles, devices, data, out, warmup, runs, threads, profile) -> None:
    """Run bundles on devices; write bench.json, bench.md and bench.html.

    Each device's outputs on the bundle's reference.npz must match the expected ones
    (the self-check). A device that fails to run or fails its self-check is reported
    with its reason, the others are still measured, and the exit code is 1.

    \b
    Example:
      edgepack bench out/*.zip --device host --device qemu-aarch64
    """
    from .bench import run_bench
    from .report.bench import write_bench_report
    from .selfcheck import describe

    try:
        result = run_bench(list(bundles), list(devices), data=data, warmup=warmup, runs=runs, threads=threads,
                           profile=profile, log=click.echo)
    except EdgepackError as e:
        _err(str(e))
        sys.exit(e.exit_code)
    paths = write_bench_report(out, result, warmup=warmup, runs=runs)
    click.echo(f"report: {paths['md']}, {paths['html']}, {paths['json']}")
    failed = [r for r in result["results"] if r.get("error") or r.get("self_check") == "fail"]
    for r in failed:
        _err(f"{r['bundle']} on {r['device']}: " + (r.get("error") or f"self-check {describe(r['self_check_detail'])}"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
