"""``python -m captioner evaluate MODEL ANNOTATIONS``: caption a captioned image set and score it.

The standard COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr) from pycocoevalcap, with
its Stanford PTB tokenizer, so figures compare with published ones (the ClipCap paper reports
COCO Karpathy-test numbers). The tokenizer and METEOR run Java programs; without ``java`` the
evaluation still runs: a simple tokenizer stands in (figures then differ slightly from
published ones) and METEOR is reported as unavailable, with the reason, instead of failing.

Writes a JSON report (metrics, model, decoding settings, counts, timings, skipped images,
warnings) and the captions in the COCO results format (``[{"image_id", "file_name",
"caption"}]``). Images that cannot be read are reported and skipped; the scores cover the
images that were captioned. One caption for (nearly) every image is a warning: the model does
not use the image (``collapse``).

A model with CLIP's text tower is also calibrated on the set (``calibration``): the score
distributions of reference, generated and shuffled captions and the thresholds that separate
them; ``--calibrate`` writes the fitted confidence rule into the model's config.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from captioner.cliopts import decoding_from_args
from captioner.config import DecodingSettings
from captioner.errors import AltCapError
from captioner.images import load_image
from captioner.lang import same_language
from captioner.pipeline import Captioner
from captioner.train import calibration
from captioner.train.collapse import evaluate_warning, one_caption_for_all
from captioner.train.data import Item, detect_format, read_dataset

METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
NO_JAVA = (
    "java not found: install a Java runtime (Debian/Ubuntu: apt-get install "
    "default-jre-headless) for METEOR and the PTB tokenizer"
)
# what pycocoevalcap's PTBTokenizer drops after tokenising
_PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-"}
_PUNCTUATION |= {".", "?", "!", ",", ":", "-", "--", "...", ";"}


class EvaluationError(AltCapError):
    code = "evaluation_failed"


def java_path() -> str | None:
    """The ``java`` executable, or None (tests patch this to take the no-Java path)."""
    return shutil.which("java")


# --- tokenisation ----------------------------------------------------------------------

Captions = dict[Any, list[str]]


def ptb_tokenize(captions: Captions, java: str) -> Captions:
    """pycocoevalcap's PTBTokenizer (Stanford CoreNLP 3.4.1, lower-cased, punctuation
    dropped), run on a temp file of ours rather than one written inside site-packages."""
    import pycocoevalcap.tokenizer.ptbtokenizer as ptb

    jar = Path(ptb.__file__).with_name(ptb.STANFORD_CORENLP_3_4_1_JAR)
    keys = [k for k, caps in captions.items() for _ in caps]
    text = "\n".join(c.replace("\n", " ") for caps in captions.values() for c in caps)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.write(text)
    try:
        cmd = [java, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer"]
        proc = subprocess.run(
            [*cmd, "-preserveLines", "-lowerCase", f.name],
            capture_output=True,
            check=False,
            timeout=600,
        )
    finally:
        os.unlink(f.name)
    lines = proc.stdout.decode("utf-8", errors="replace").split("\n")
    if proc.returncode != 0 or len(lines) < len(keys):
        err = proc.stderr.decode("utf-8", errors="replace").strip().splitlines()
        raise EvaluationError(
            f"the PTB tokenizer failed (exit {proc.returncode}): {err[0] if err else 'no output'}"
        )
    out: Captions = {}
    for k, line in zip(keys, lines, strict=False):
        words = [w for w in line.rstrip().split(" ") if w and w not in _PUNCTUATION]
        out.setdefault(k, []).append(" ".join(words))
    return out


_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def simple_tokenize(captions: Captions) -> Captions:
    """Lower-case words and numbers, punctuation dropped: close to the PTB tokenizer on
    ordinary captions (it differs on contractions and hyphens)."""
    return {k: [" ".join(_WORD.findall(c.lower())) for c in caps] for k, caps in captions.items()}


# --- scoring ---------------------------------------------------------------------------


def score(
    references: Captions,
    candidates: dict[Any, str],
    *,
    java: str | None = None,
    language: str = "en",
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """COCO caption metrics of ``candidates`` (one caption per key) against ``references``.

    Returns (metrics, notes): a metric that could not be computed is None, and ``notes``
    says why and which tokenizer ran. ``language``: the captions'; METEOR is English only."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    keys = [k for k in references if k in candidates]
    if not keys:
        raise EvaluationError("nothing to score: no image has both references and a caption")
    gts = {k: list(references[k]) for k in keys}
    res = {k: [candidates[k]] for k in keys}
    notes: dict[str, Any] = {"tokenizer": "ptb", "unavailable": {}}
    if java:
        try:
            gts, res = ptb_tokenize(gts, java), ptb_tokenize(res, java)
        except (EvaluationError, OSError, subprocess.SubprocessError) as e:
            notes["tokenizer"] = "simple"
            notes["tokenizer_note"] = f"{e}; a simple tokenizer was used instead"
            java = None  # METEOR runs the same Java: do not try it either
            notes["unavailable"]["METEOR"] = str(e)
    else:
        notes["tokenizer"] = "simple"
        notes["tokenizer_note"] = f"{NO_JAVA}; a simple tokenizer was used instead"
        notes["unavailable"]["METEOR"] = NO_JAVA
    if notes["tokenizer"] == "simple":
        gts, res = simple_tokenize(gts), simple_tokenize(res)

    metrics: dict[str, float | None] = dict.fromkeys(METRICS)
    with contextlib.redirect_stdout(io.StringIO()):  # BLEU prints its internals
        bleu, _ = Bleu(4).compute_score(gts, res)
    for i, value in enumerate(bleu):
        metrics[f"Bleu_{i + 1}"] = float(value)
    metrics["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    metrics["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    if java and not same_language("en", language):
        notes["unavailable"]["METEOR"] = (
            f"METEOR as pycocoevalcap runs it matches English stems, synonyms and paraphrases; "
            f"these captions are in {language!r}"
        )
    elif java:
        try:
            metrics["METEOR"] = _meteor(gts, res)
        except Exception as e:  # the JVM failed to start, ran out of memory, died: say so
            notes["unavailable"]["METEOR"] = f"METEOR failed: {type(e).__name__}: {e}"
    return metrics, notes


def _meteor(gts: Captions, res: Captions) -> float:
    from pycocoevalcap.meteor.meteor import Meteor

    meteor = Meteor()  # runs `java` from PATH (java_path() finds the same one)
    try:
        value, _ = meteor.compute_score(gts, res)
    finally:
        with contextlib.suppress(Exception):
            meteor.meteor_p.kill()
            meteor.meteor_p.wait(timeout=10)
        # Meteor.__del__ closes the JVM's stdin too: input still buffered for a JVM that died
        # would raise BrokenPipeError there, printed as an "Exception ignored" traceback
        with contextlib.suppress(OSError, ValueError):
            meteor.meteor_p.stdin.close()
        # a failure inside compute_score leaves its lock held, and Meteor.__del__ takes that
        # lock: release it, or garbage collection would hang the process
        if meteor.lock.locked():
            meteor.lock.release()
    return float(value)


# --- captioning ------------------------------------------------------------------------


def coco_image_id(item: Item, fmt: str = "coco") -> int | str:
    """COCO results use integer image ids (COCO and Karpathy sets); other sets keep their
    own, as text: a folder's ``0001.jpg`` stays ``"0001"``."""
    numbered = fmt in ("coco", "karpathy") and str(item.id).isdigit()
    return int(item.id) if numbered else str(item.id)


def file_names(items: Sequence[Item]) -> dict[str, str]:
    """Each image's path relative to the folder that holds them all: COCO's ``file_name``,
    a folder set's ``sub/cat.jpg``."""
    paths = [os.path.abspath(it.image) for it in items]
    if not paths:
        return {}
    root = os.path.commonpath([os.path.dirname(p) for p in paths])
    pairs = zip(items, paths, strict=True)
    return {it.image: Path(os.path.relpath(p, root)).as_posix() for it, p in pairs}


def caption_items(
    captioner,
    items: Sequence[Item],
    settings: DecodingSettings,
    *,
    batch_size: int = 32,
    workers: int = 4,
    progress: bool = True,
    fmt: str = "coco",
    scores: calibration.Scores | None = None,
) -> tuple[dict[int | str, str], list[dict[str, str]]]:
    """Caption every readable image: ({image id: caption}, [skipped images with the reason]).
    Images are decoded in a thread pool while the model works on the previous batch.
    ``fmt``: the set's format, which says what its image ids are (``coco_image_id``).
    ``scores``: gathers each image's CLIP scores for calibration (needs a text tower)."""

    def load(item: Item):
        try:
            return item, load_image(item.image, max_pixels=captioner.max_pixels), None
        except AltCapError as e:
            return item, None, e
        except OSError as e:
            return item, None, EvaluationError(f"cannot read {item.image}: {e}", code="not_found")

    captions: dict[int | str, str] = {}
    skipped: list[dict[str, str]] = []
    bar = tqdm(total=len(items), desc="captioning", unit="img", disable=not progress)
    chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending = pool.map(lambda chunk: [load(it) for it in chunk], chunks)
        for loaded in pending:
            ok = []
            for item, image, err in loaded:
                if err is None:
                    ok.append((item, image))
                else:
                    skipped.append(
                        {"image": str(item.image), "code": err.code, "message": err.message}
                    )
            if ok:
                pixels = captioner.preprocess([im for _, im in ok])
                if scores is None:
                    results = captioner.caption_pixels(pixels, settings)
                else:
                    results = scores.caption_batch(captioner, pixels, settings, [i for i, _ in ok])
                for (item, _), r in zip(ok, results, strict=True):
                    captions[coco_image_id(item, fmt)] = r.text
            bar.update(len(loaded))
    bar.close()
    return captions, skipped


def evaluate(
    model: str,
    annotations: str,
    *,
    image_root: str | None = None,
    split: str | None = None,
    settings: DecodingSettings | None = None,
    batch_size: int = 32,
    limit: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    workers: int = 4,
    progress: bool = True,
    calibrate: bool = False,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Caption a set and score it: (report, captions in the COCO results format).

    With a text tower, the report has a ``calibration`` section (``train.calibration``);
    ``calibrate`` also writes its fitted confidence rule into the model directory ``model``."""
    t0 = time.perf_counter()
    if calibrate and not Path(model).expanduser().is_dir():
        raise EvaluationError(
            f"--calibrate writes into a model directory, and {model!r} is a name or Hub id: "
            "copy its directory (named models are kept under $ALTCAP_CACHE, by default "
            "$HF_HOME/altcap/NAME) and evaluate the copy",
            code="invalid_settings",
        )
    fmt = detect_format(annotations)
    items = read_dataset(annotations, fmt, image_root=image_root, split=split)
    if limit is not None:
        items = items[:limit]
    captioner = Captioner.from_pretrained(model, device=device, dtype=dtype)
    settings = captioner.settings(settings)
    if calibrate and not captioner.can_score:
        raise EvaluationError(
            f"--calibrate needs CLIP's text tower, and {model} has none "
            "(convert or make the model again to include one: docs/confidence.md)",
            code="invalid_settings",
        )
    scores = calibration.Scores.for_items(items) if captioner.can_score else None
    t1 = time.perf_counter()
    captions, skipped = caption_items(
        captioner,
        items,
        settings,
        batch_size=batch_size,
        workers=workers,
        progress=progress,
        fmt=fmt,
        scores=scores,
    )
    if not captions:
        raise EvaluationError(
            f"none of the {len(items)} images could be read (first: "
            f"{skipped[0]['image']}: {skipped[0]['message']}); check --image-root"
        )
    t2 = time.perf_counter()
    references = {coco_image_id(it, fmt): list(it.captions) for it in items}
    metrics, notes = score(references, captions, java=java_path(), language=captioner.language)
    t3 = time.perf_counter()
    keys = list(captions)
    collapse = one_caption_for_all([captions[k] for k in keys], [references[k][0] for k in keys])
    warnings = [evaluate_warning(collapse)] if collapse is not None else []
    calibrated = calibration.report(scores, captioner.config) if scores is not None else None
    if calibrated is not None and calibrate and calibrated["similarity_cut"]["auroc"] > 0.5:
        fit = calibrated["confidence_rule"]["fitted"]
        path = calibration.write_calibration(
            model, fit["confidence_center"], fit["confidence_slope"]
        )
        calibrated["written"] = str(path)
    elif calibrate and calibrated is None:
        raise EvaluationError(
            "--calibrate needs at least two captioned images with different captions",
            code="invalid_settings",
        )
    t4 = time.perf_counter()
    report = {
        "model": model,
        "model_source": captioner.config.source,
        "language": captioner.language,
        "annotations": str(annotations),
        "split": split,
        "settings": settings.to_dict(),
        "device": str(captioner.device),
        "dtype": str(captioner.dtype).removeprefix("torch."),
        "metrics": metrics,
        **notes,
        "counts": {
            "images": len(items),
            "captioned": len(captions),
            "skipped": len(skipped),
            "references": sum(len(references[k]) for k in captions),
        },
        "skipped": skipped,
        "warnings": warnings,
        "time_s": {
            "load": round(t1 - t0, 3),
            "captioning": round(t2 - t1, 3),
            "scoring": round(t3 - t2, 3),
            "total": round(t4 - t0, 3),
        },
        "images_per_s": round(len(captions) / max(t2 - t1, 1e-9), 2),
    }
    if calibrated is not None:
        report["calibration"] = calibrated
        report["time_s"]["calibration"] = round(t4 - t3, 3)
    else:
        report["calibration_note"] = (
            "no calibration: the model has no CLIP text tower to score captions with"
            if scores is None
            else "no calibration: it needs at least two images with different captions"
        )
    names = file_names(items)
    files = {coco_image_id(it, fmt): names[it.image] for it in items}
    results = [{"image_id": k, "file_name": files[k], "caption": v} for k, v in captions.items()]
    return report, results


def _write_json(path: str, data: Any) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, p)


# --- CLI -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise EvaluationError("--limit must be >= 1", code="invalid_settings")
    if args.workers < 1:
        raise EvaluationError("--workers must be >= 1", code="invalid_settings")
    settings = decoding_from_args(args)
    report, results = evaluate(
        args.model,
        args.annotations,
        image_root=args.image_root,
        split=args.split,
        settings=settings,
        batch_size=args.batch_size,
        limit=args.limit,
        device=args.device,
        dtype=args.dtype,
        workers=args.workers,
        progress=not args.no_progress,
        calibrate=args.calibrate,
    )
    if args.out:
        _write_json(args.out, report)
    if args.captions_out:
        _write_json(args.captions_out, results)
    for s in report["skipped"][:10]:
        print(f"skipped {s['image']}: {s['code']}: {s['message']}", file=sys.stderr)
    if len(report["skipped"]) > 10:
        print(f"... and {len(report['skipped']) - 10} more skipped", file=sys.stderr)
    for name, why in report["unavailable"].items():
        print(f"note: {name} unavailable: {why}", file=sys.stderr)
    if report.get("tokenizer_note"):
        print(f"note: {report['tokenizer_note']}", file=sys.stderr)
    for warning in report["warnings"]:
        print(warning, file=sys.stderr)
    c = report["counts"]
    print(f"{c['captioned']} of {c['images']} images captioned ({c['skipped']} skipped)")
    for name in METRICS:
        value = report["metrics"][name]
        print(f"{name:8s} {'n/a' if value is None else f'{value:.4f}'}")
    if "calibration" in report:
        print("\n".join(calibration.lines(report["calibration"])))
        for warning in report["calibration"]["warnings"]:
            print(warning, file=sys.stderr)
    else:
        print(f"note: {report['calibration_note']}", file=sys.stderr)
    if args.calibrate and not report.get("calibration", {}).get("written"):
        print(
            "error: calibration_not_written: references do not score above shuffled ones, "
            "so config.json was left as it was",
            file=sys.stderr,
        )
        return 1
    return 0
