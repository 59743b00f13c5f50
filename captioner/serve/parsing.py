"""Request bodies into ``Job``s (``Item``s, ``DecodingSettings``, ``read_text``), with a
clear error for bad input.

Kept apart from the views and free of Flask: the functions take the body bytes or the
parsed multipart fields, so the rules (types, counts, base64 forms) read and test on their
own. Types are checked here; value ranges are the ``DecodingSettings`` dataclass's job.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any

from captioner.config import DecodingSettings
from captioner.errors import InvalidSettings
from captioner.serve.service import InvalidRequest, Item, Job

if TYPE_CHECKING:  # only the types: the views hand over werkzeug's parsed multipart fields
    from werkzeug.datastructures import FileStorage, MultiDict

__all__ = [
    "MAX_AUTHOR_ALT_CHARS",
    "MAX_SEED",
    "MAX_STOP_TOKEN",
    "READ_TEXT_WORDS",
    "check_count",
    "decode_base64",
    "empty_upload",
    "load_json",
    "parse_alt",
    "parse_decoding",
    "parse_form",
    "parse_json",
    "parse_read_text",
    "upload_item",
]

MAX_SEED = 2**63 - 1  # torch generators take 64-bit seeds; stay in the signed range
MAX_STOP_TOKEN = 64  # characters: a stop "token" is a short piece of text
# characters of an author's alt to check: more than any alt worth reading aloud (CLIP's text
# tower reads only its first 77 tokens anyway), a bound on what one image makes us tokenise
MAX_AUTHOR_ALT_CHARS = 2000
# read_text as a form field or query parameter (JSON takes true or false): word -> value
READ_TEXT_WORDS = {"true": True, "1": True, "false": False, "0": False}

_NUMBER = (int, float)
# decoding field -> (accepted JSON types, how to say so)
_DECODING_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "method": ((str,), "a string"),
    "beam_size": ((int,), "an integer"),
    "top_p": (_NUMBER, "a number"),
    "temperature": (_NUMBER, "a number"),
    "seed": ((int, type(None)), "an integer or null"),
    "max_tokens": ((int,), "an integer"),
    "min_tokens": ((int,), "an integer"),
    "stop_token": ((str, type(None)), "a string or null"),
    "stop_at_eos": ((bool,), "true or false"),
    "candidates": ((int,), "an integer"),  # k > 1: k candidates, reranked (issue 23)
    "clip_weight": (_NUMBER, "a number"),
}


def parse_decoding(value: object) -> DecodingSettings:
    """Decoding settings from request JSON; types are checked here, ranges by the dataclass."""
    if value is None:
        return DecodingSettings()
    if not isinstance(value, dict):
        raise InvalidRequest("decoding must be an object")
    for key, v in value.items():
        if key not in _DECODING_TYPES:
            raise InvalidSettings(f"unknown decoding setting {key!r}")
        types, expected = _DECODING_TYPES[key]
        # bool is an int in Python, but true is not a beam size.
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            raise InvalidRequest(f"decoding.{key} must be {expected}")
    if value.get("seed") is not None and not 0 <= value["seed"] <= MAX_SEED:
        raise InvalidSettings(f"seed must be between 0 and {MAX_SEED}")
    stop = value.get("stop_token")
    if isinstance(stop, str) and len(stop) > MAX_STOP_TOKEN:
        raise InvalidSettings(f"stop_token must be at most {MAX_STOP_TOKEN} characters")
    return DecodingSettings.from_dict(value)


def parse_alt(value: object, where: str) -> str | None:
    """An author's alt to check against its image (``where`` names it in the error).

    A string of at most ``MAX_AUTHOR_ALT_CHARS``; one of only whitespace (an empty alt marks
    a decorative image: nothing to check) gives None, no alt. Anything else is a 400.
    """
    if not isinstance(value, str):
        raise InvalidRequest(f"{where} must be a string")
    if len(value) > MAX_AUTHOR_ALT_CHARS:
        raise InvalidRequest(f"{where} must be at most {MAX_AUTHOR_ALT_CHARS} characters")
    return value if value.strip() else None


def parse_read_text(value: object) -> bool:
    """The ``read_text`` flag: JSON ``true``/``false``, or a form or query word
    (``READ_TEXT_WORDS``, any case); absent (None) means true."""
    if value is None:
        return True
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in READ_TEXT_WORDS:
        return READ_TEXT_WORDS[value.strip().lower()]
    raise InvalidRequest("read_text must be true or false")


def decode_base64(text: str) -> bytes:
    """Standard or URL-safe base64, whitespace ignored, ``data:...;base64,`` prefix allowed."""
    if text.startswith("data:") and "," in text:
        header, text = text.split(",", 1)
        if not header.endswith(";base64"):
            raise InvalidRequest("a data: URL must be base64-encoded (data:image/png;base64,...)")
    compact = "".join(text.split()).replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("data is not valid base64") from None


def load_json(body_bytes: bytes) -> Any:
    """A request body as JSON, or ``InvalidRequest`` saying why it is not."""
    try:
        body = json.loads(body_bytes)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise InvalidRequest(f"the body is not valid JSON: {str(exc)[:200]}") from None
    path = unencodable_string(body)
    if path is not None:
        where = (path or "the body")[:200]
        raise InvalidRequest(
            f"{where} is not valid Unicode text: it holds a lone surrogate (\\ud800-\\udfff)"
        )
    return body


def unencodable_string(value: Any) -> str | None:
    """Where in parsed JSON a string (key or value) is not Unicode text (``images[0].url``;
    ``""``: the value itself), or None.

    JSON may escape lone surrogates (``"\\ud800"``), and ``json.loads`` accepts them, but
    such a string cannot be encoded as UTF-8: left in, it fails later, far from the request
    (a database insert, a hash, a log line). Every client string is checked here, once.
    """
    stack = [(value, "")]
    while stack:  # iterative: the nesting depth is the client's to choose
        value, path = stack.pop()
        if isinstance(value, str):
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    return path
        elif isinstance(value, dict):
            for key, item in value.items():
                if unencodable_string(key) is not None:
                    return f"a key of {path or 'the body'}"
                stack.append((item, f"{path}.{key}" if path else key))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(value))
    return None


def parse_json(body: Any, max_images: int) -> Job:
    """``{"images": [{"url"} | {"data"}, ...], "decoding": {...}, "read_text": bool}``,
    already parsed (``load_json``); the job has no deadline yet. An image object may also
    carry the author's ``alt`` (``parse_alt``), to be checked against the image.

    Bad base64 in one image is that image's error, not the request's: the others still
    get their captions.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object with an images list")
    unknown = set(body) - {"images", "decoding", "read_text"}
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    raw_items = body.get("images")
    if not isinstance(raw_items, list):
        raise InvalidRequest("images must be a list of {url} or {data} objects")
    check_count(len(raw_items), max_images)
    read_text = body.get("read_text", True)
    if not isinstance(read_text, bool):  # JSON has booleans: no "false" strings here
        raise InvalidRequest("read_text must be true or false")
    items = []
    for i, raw in enumerate(raw_items):
        sources = set(raw) - {"alt"} if isinstance(raw, dict) else set()
        if not isinstance(raw, dict) or len(sources) != 1 or not sources <= {"url", "data"}:
            raise InvalidRequest(
                f"images[{i}] must be an object with one field, url or data (and an alt)"
            )
        (kind,) = sources
        value = raw[kind]
        if not isinstance(value, str):
            raise InvalidRequest(f"images[{i}].{kind} must be a string")
        alt = parse_alt(raw["alt"], f"images[{i}].alt") if "alt" in raw else None
        if kind == "url":
            items.append(Item({"kind": "url", "url": value}, url=value, alt=alt))
            continue
        item = Item({"kind": "data"}, alt=alt)
        try:
            item.data = decode_base64(value)
        except InvalidRequest as exc:
            item.error = InvalidRequest(f"images[{i}].{exc.message}")
        items.append(item)
    return Job(items, parse_decoding(body.get("decoding")), read_text=read_text)


def parse_form(
    files: MultiDict[str, FileStorage], form: MultiDict[str, str], max_images: int
) -> Job:
    """Multipart uploads (``image``, several allowed) and ``url`` fields, in that order, a
    ``decoding`` field (JSON text) and a ``read_text`` field (``parse_read_text``).

    ``alt`` fields, if any, are the authors' alts: one per image, in the images' order
    (uploads, then URLs); an empty one stands for an image without.
    """
    items = [upload_item(f) for f in files.getlist("image") if not empty_upload(f)]
    items += [
        Item({"kind": "url", "url": u.strip()}, url=u.strip())
        for u in form.getlist("url")
        if u.strip()
    ]
    check_count(len(items), max_images)
    alts = form.getlist("alt")
    if alts and len(alts) != len(items):
        raise InvalidRequest(
            f"{len(alts)} alt fields for {len(items)} images: send one per image, in order"
            " (uploads, then URLs), an empty one for an image without"
        )
    for i, (item, alt) in enumerate(zip(items, alts, strict=False)):
        item.alt = parse_alt(alt, f"alt[{i}]")
    decoding_text = form.get("decoding", "").strip()
    decoding = None
    if decoding_text:
        try:
            decoding = json.loads(decoding_text)
        except (ValueError, RecursionError):
            raise InvalidRequest("the decoding field must be a JSON object") from None
    read_text = parse_read_text(form.get("read_text"))
    return Job(items, parse_decoding(decoding), read_text=read_text)


def upload_item(upload: FileStorage) -> Item:
    return Item({"kind": "upload", "filename": upload.filename or ""}, data=upload.read())


def empty_upload(upload: FileStorage) -> bool:
    """A browser sends an empty, nameless part for a file input left empty."""
    if upload.filename:
        return False
    head = upload.stream.read(1)
    upload.stream.seek(0)
    return not head


def check_count(n: int, max_images: int) -> None:
    if n == 0:
        raise InvalidRequest("no images: send at least one image or URL")
    if n > max_images:
        raise InvalidRequest(f"too many images: {n} (at most {max_images} per request)")
