"""Set attributes on a page's start tags in place, where an HTML5 parser finds the tags.

A patched page is the owner's page with alt (and lang) set on some images and every other
character unchanged, so the edits go into the original text rather than through a
re-serialised tree. Where a tag starts is the parser's business: the standard library's
``html.parser`` ends a ``<script>`` at ``</ script>`` and knows nothing of the script data
escaped states (``<!-- <script>`` inside a script), RAWTEXT (``<style>``, ``<iframe>``, ...)
or PLAINTEXT, so an ``<img>`` inside a JavaScript string looked like a tag, got an
``alt="…"`` inserted into the script, and a caption such as ``+alert(1)//`` ran in the
browser (issue 20). Here the positions come from html5lib, which follows the WHATWG
tokenizer, driven by its own tree construction: that is what switches the tokenizer into
script data, RAWTEXT, RCDATA, PLAINTEXT or CDATA, exactly as a browser does.

- ``Document(text)`` parses the page once and records, for each start tag the tokenizer
  emits, where it starts and ends; the attribute spans inside a tag are found by the
  tokenizer's attribute states (``_scan``) and checked against the attributes html5lib read.
- ``Document.set_attributes(changes)`` quotes and escapes the values, edits the text, then
  parses the result again and compares the two trees: they must be the same except for the
  attributes set on the elements of the changed tags. A page with a ``<noscript>`` is read
  two ways (its content is markup with scripting off, RAWTEXT with it on), so it is parsed
  and compared both ways; with scripting on, a changed tag must still be a tag, or be text
  of a ``<noscript>`` (whose text is then all that may differ). A change that fails is
  dropped and returned, so that the caller can say so; the rest are kept. Finding which
  failed takes a parse per halving, ``MAX_CHECKS`` at most; past that the rest is dropped.

Offsets: html5lib reads text with CR LF and CR turned into LF, so the parse is of that
normalised text and every position is an offset into it; ``_Newlines`` maps them back.
"""

from __future__ import annotations

import bisect
import html as html_lib
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from html5lib import HTMLParser
from html5lib._inputstream import HTMLUnicodeInputStream
from html5lib._tokenizer import HTMLTokenizer
from html5lib.constants import tokenTypes
from html5lib.treebuilders import getTreeBuilder

__all__ = ["Attribute", "Document", "Patched", "StartTag"]

_START_TAG = tokenTypes["StartTag"]
_SPACE = "\t\n\f "  # the tokenizer's whitespace (no CR: the text is normalised first)
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_NOSCRIPT = "{http://www.w3.org/1999/xhtml}noscript"
_HAS_NOSCRIPT = re.compile(r"<noscript", re.IGNORECASE | re.ASCII)
_NOSCRIPT_END = re.compile(r"</noscript[\t\n\f />]", re.IGNORECASE | re.ASCII)  # "appropriate"
MAX_CHECKS = 24  # parses of an edited page, at most, to find edits that fail the check


class Attribute(NamedTuple):
    value: str  # as the tokenizer reads it: character references decoded
    start: int  # where its name starts
    end: int  # where it ends: after its value, or its name when it has none


@dataclass(frozen=True)
class StartTag:
    """A start tag as the tokenizer emitted it; offsets into the normalised text."""

    name: str  # lower case
    start: int  # its "<"
    end: int  # after its ">"
    name_end: int  # after its name: where new attributes go
    attributes: Mapping[str, Attribute]  # the first of each name, as browsers keep


class Patched(NamedTuple):
    text: str  # the page with the changes that passed the check
    dropped: list[StartTag]  # tags whose change would have changed the page otherwise


# --- html5lib, recording offsets -------------------------------------------------------


class _WholeText(HTMLUnicodeInputStream):
    """The text as one chunk, so that ``chunkOffset`` is an offset into it (html5lib reads
    10 KiB chunks and counts from each one's start)."""

    def __init__(self, text: str) -> None:
        self._text = text
        super().__init__(text)

    def readChunk(self, chunkSize: int | None = None) -> bool:
        if self.chunk is self._text:  # read: stay at the end (html5lib's would start over)
            self.chunkOffset = self.chunkSize
            return False
        self.chunk, self.chunkSize, self.chunkOffset = self._text, len(self._text), 0
        return bool(self._text)


class _Tokenizer(HTMLTokenizer):
    """html5lib's tokenizer, noting where each start tag starts and ends, and what attributes
    it had when emitted (before the tree builder adjusts foreign ones)."""

    def __init__(self, text: str, parser: HTMLParser) -> None:
        super().__init__(text, parser=parser)
        self.stream = _WholeText(text)
        self.start_tags: dict[int, tuple[str, int, list[tuple[str, str]]]] = {}
        self.noscripts: list[int] = []  # the <noscript> tags whose content is RAWTEXT
        self._open = 0  # offset of the "<" of the tag being read

    def tagOpenState(self) -> bool:
        # Start tags begin only here, after the data state has consumed the "<".
        self._open = self.stream.chunkOffset - 1
        return super().tagOpenState()

    def emitCurrentToken(self) -> None:
        token = self.currentToken
        if token["type"] == _START_TAG:
            token["offset"] = self._open
        super().emitCurrentToken()  # lower-cases the name, keeps the first of duplicates
        if token["type"] == _START_TAG:
            end = self.stream.chunkOffset
            self.start_tags[self._open] = (token["name"], end, list(token["data"].items()))


_ETreeBuilder = getTreeBuilder("etree")


class _TreeBuilder(_ETreeBuilder):
    """html5lib's ElementTree builder, noting the start tag (offset) each element came from."""

    def reset(self) -> None:
        super().reset()
        # id(element) -> (element, offset); the element is kept so that its id stays its own
        self.offsets: dict[int, tuple[ET.Element, int]] = {}

    def _note(self, element: Any, token: dict) -> Any:
        if "offset" in token:
            self.offsets[id(element._element)] = (element._element, token["offset"])
        return element

    def createElement(self, token: dict) -> Any:
        return self._note(super().createElement(token), token)

    def insertElementNormal(self, token: dict) -> Any:
        return self._note(super().insertElementNormal(token), token)

    def getDocument(self) -> ET.Element:
        return self.document._element  # the whole tree: doctype and comments outside <html>


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(tree=_TreeBuilder)

    def _parse(
        self,
        stream: str,
        innerHTML: bool = False,
        container: str = "div",
        scripting: bool = False,
        **_kwargs: object,
    ) -> None:
        # html5lib's own _parse, with the offset-noting tokenizer (a text stream never
        # changes encoding, so there is no reparse to handle)
        self.innerHTMLMode = innerHTML
        self.container = container
        self.scripting = scripting
        self.tokenizer = _Tokenizer(stream, self)
        self.reset()
        self.mainLoop()

    def parseError(self, errorcode: str = "", datavars: object = None) -> None:
        pass  # html5lib would find the line of each error: a scan of the text per error

    def parseRCDataRawtext(self, token: dict, contentType: str) -> None:
        if token["name"] == "noscript" and "offset" in token:  # only with scripting on
            self.tokenizer.noscripts.append(token["offset"])
        super().parseRCDataRawtext(token, contentType)


class _Parse(NamedTuple):
    tree: ET.Element
    offsets: dict[int, tuple[ET.Element, int]]  # id(element) -> (element, its tag's offset)
    start_tags: dict[int, tuple[str, int, list[tuple[str, str]]]]  # (name, end, attributes)
    raw: list[tuple[int, int]]  # (start, end) of each <noscript>'s RAWTEXT (scripting on)


def _parse(text: str, scripting: bool) -> _Parse:
    parser = _Parser()
    tree = parser.parse(text, scripting=scripting)
    tokens = parser.tokenizer
    raw = []
    for offset in tokens.noscripts:
        start = tokens.start_tags[offset][1]
        end = _NOSCRIPT_END.search(text, start)  # RAWTEXT has no escapes: the first one ends it
        raw.append((start, end.start() if end else len(text)))
    return _Parse(tree, parser.tree.offsets, tokens.start_tags, raw)


# --- attribute spans ---------------------------------------------------------------------


def _scan(text: str, start: int) -> tuple[int, list[tuple[str, int, int]], int] | None:
    """(end of the name, [(attribute name, start, end)], end) of the start tag at ``start``,
    read by the tokenizer's tag name and attribute states; None at the end of the text."""
    n, i = len(text), start + 1
    while i < n and text[i] not in _SPACE + "/>":
        i += 1
    name_end, attributes = i, []
    while i < n:
        c = text[i]
        if c in _SPACE or c == "/":  # before attribute name; self-closing start tag
            i += 1
            continue
        if c == ">":
            return name_end, attributes, i + 1
        begin, i = i, i + 1  # an attribute name may start with "="
        while i < n and text[i] not in _SPACE + "/>=":
            i += 1
        name, end = text[begin:i], i
        j = i
        while j < n and text[j] in _SPACE:  # after attribute name
            j += 1
        if j < n and text[j] == "=":
            j += 1
            while j < n and text[j] in _SPACE:  # before attribute value
                j += 1
            if j < n and text[j] in "\"'":
                close = text.find(text[j], j + 1)
                if close < 0:
                    return None
                end = i = close + 1
            else:  # unquoted (or missing, at ">")
                while j < n and text[j] not in _SPACE + ">":
                    j += 1
                end = i = j
        attributes.append((name, begin, end))
    return None


def _start_tag(
    text: str, offset: int, name: str, end: int, read: list[tuple[str, str]]
) -> StartTag | None:
    """The ``StartTag`` at ``offset``, or None when ``_scan`` disagrees with html5lib."""
    scanned = _scan(text, offset)
    if scanned is None or scanned[2] != end:
        return None
    name_end, spans, _ = scanned
    attributes: dict[str, Attribute] = {}
    values = dict(read)
    for raw, begin, stop in spans:
        key = raw.translate(_ASCII_LOWER).replace("\0", "\ufffd")
        if key not in attributes and key in values:
            attributes[key] = Attribute(values[key], begin, stop)
    if list(attributes) != [key for key, _ in read]:
        return None
    return StartTag(name, offset, end, name_end, attributes)


# --- editing -----------------------------------------------------------------------------


def _attribute_text(name: str, value: str) -> str:
    """``name="value"``, with the value escaped so that a parser reads back exactly ``value``
    (quotes, ``&``, ``<``, ``>`` and line breaks as references; NUL, which no parser keeps,
    as U+FFFD, what it would read)."""
    value = html_lib.escape(value.replace("\0", "\ufffd"), quote=True)
    return f'{name}="{value.replace(chr(13), "&#13;").replace(chr(10), "&#10;")}"'


class _Edit(NamedTuple):
    start: int  # offsets into the normalised text
    end: int
    text: str


def _edits(tag: StartTag, values: Mapping[str, str]) -> list[_Edit]:
    """An existing attribute is rewritten where it stands; a new one goes after the tag's
    name, in the order given."""
    edits = []
    for name, value in values.items():
        old = tag.attributes.get(name)
        if old is not None:
            edits.append(_Edit(old.start, old.end, _attribute_text(name, value)))
        else:
            edits.append(_Edit(tag.name_end, tag.name_end, " " + _attribute_text(name, value)))
    return edits


def _apply(text: str, edits: Iterable[_Edit]) -> str:
    pieces, done = [], 0
    for edit in edits:
        pieces += [text[done : edit.start], edit.text]
        done = edit.end
    return "".join([*pieces, text[done:]])


class _Newlines:
    """Offsets between a text and its normalised form (CR LF and CR as LF, as parsers read)."""

    def __init__(self, text: str) -> None:
        self.original = text
        self.text = text.replace("\r\n", "\n").replace("\r", "\n")
        crs = [m.start() for m in re.finditer("\r\n", text)]  # the CRs that go
        self._crs = crs
        self._lfs = [at - i for i, at in enumerate(crs)]  # their LFs, normalised

    def to_normalised(self, offset: int) -> int:
        return offset - bisect.bisect_left(self._crs, offset)

    def to_original(self, offset: int) -> int:
        """The original offset; the LF of a CR LF maps to its CR."""
        return offset + bisect.bisect_left(self._lfs, offset)


def _back(edits: list[_Edit]):
    """Maps an offset of the edited text to the unedited one's (edits sorted, apart); -1
    inside the text of an edit."""
    starts: list[int] = []  # where each edit's text starts in the edited text
    shifts: list[int] = []  # how much the edits up to each one (included) moved what follows
    shift = 0
    for edit in edits:
        starts.append(edit.start + shift)
        shift += len(edit.text) - (edit.end - edit.start)
        shifts.append(shift)

    def back(offset: int) -> int:
        i = bisect.bisect_right(starts, offset) - 1
        if i < 0:
            return offset
        if offset < starts[i] + len(edits[i].text):
            return -1
        return offset - shifts[i]

    return back


_Record = tuple  # ("element", tag, attributes, offset) | ("text", data) | ("end",)


def _records(parse: _Parse, where=None, mask_noscript: bool = False) -> list[_Record]:
    """The tree in document order, each element with its attributes and the offset of the
    tag it came from (``where`` maps offsets; None for elements no tag made)."""
    out: list[_Record] = []
    stack: list[Any] = [parse.tree]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            out.append(("text", node))
            continue
        if node is None:
            out.append(("end",))
            continue
        noted = parse.offsets.get(id(node))
        offset = noted[1] if noted is not None and noted[0] is node else None
        if offset is not None and where is not None:
            offset = where(offset)
        tag = node.tag if isinstance(node.tag, str) else "#comment"
        out.append(("element", tag, dict(node.attrib), offset))
        stack.append(None)
        for child in reversed(node):
            if child.tail:
                stack.append(child.tail)
            stack.append(child)
        if node.text:
            stack.append("#noscript" if mask_noscript and tag == _NOSCRIPT else node.text)
    return out


def _expected(records: list[_Record], changes: Mapping[int, Mapping[str, str]]) -> list[_Record]:
    out = []
    for record in records:
        if record[0] == "element" and record[3] in changes:
            attributes = dict(record[2])
            for name, value in changes[record[3]].items():
                attributes[name] = value.replace("\0", "\ufffd")
            record = (*record[:2], attributes, record[3])
        out.append(record)
    return out


# --- the document --------------------------------------------------------------------------


class Document:
    """A page's text as an HTML5 parser reads it: its start tags, by offset."""

    def __init__(self, text: str) -> None:
        self._lines = _Newlines(text)
        self._parse = _parse(self._lines.text, scripting=False)
        self._scripting: _Parse | None = None  # parsed as with scripts on, when needed
        self._tags: dict[int, StartTag | None] = {}
        self._changes: dict[int, tuple[StartTag, dict[str, str]]] = {}  # being checked
        self._checks_left = MAX_CHECKS
        self._cached: dict[bool, list[_Record]] = {}  # scripting -> the unedited page's records

    def start_tag(self, offset: int) -> StartTag | None:
        """The start tag whose "<" is at ``offset`` of the original text, or None when the
        parser saw none there (text of a script, a comment, an attribute value, ...)."""
        at = self._lines.to_normalised(offset)
        if at not in self._tags:
            read = self._parse.start_tags.get(at)
            self._tags[at] = _start_tag(self._lines.text, at, *read) if read else None
        return self._tags[at]

    def line(self, tag: StartTag) -> int:
        """The tag's line number (from 1), for messages."""
        return self._lines.text.count("\n", 0, tag.start) + 1

    def set_attributes(self, changes: Iterable[tuple[StartTag, Mapping[str, str]]]) -> Patched:
        """The text with each tag's attributes set to the values given (see the module's
        docstring for the check); tags must come from ``start_tag``."""
        by_start = {tag.start: (tag, dict(values)) for tag, values in changes if values}
        self._changes = by_start
        self._checks_left = MAX_CHECKS
        kept = self._verified([at for at in sorted(by_start) if self._in_a_tag(by_start[at][0])])
        dropped = [by_start[at][0] for at in sorted(set(by_start) - set(kept))]
        edits = self._sorted_edits({at: by_start[at] for at in kept})
        to_original = self._lines.to_original
        original = [_Edit(to_original(e.start), to_original(e.end), e.text) for e in edits]
        return Patched(_apply(self._lines.original, original), dropped)

    def _scripting_parse(self) -> _Parse | None:
        """The page parsed with scripting on, where that differs: with a ``<noscript>``."""
        if self._scripting is None and _HAS_NOSCRIPT.search(self._lines.text):
            self._scripting = _parse(self._lines.text, scripting=True)
        return self._scripting

    def _in_a_tag(self, tag: StartTag) -> bool:
        """Whether ``tag`` is also a tag with scripting on, or text of a ``<noscript>`` (an
        image there is text, and its alt too); it is one with scripting off. The check finds
        the rest; this finds at once what ``<noscript>`` turns into a script's text."""
        scripting = self._scripting_parse()
        if scripting is None or scripting.start_tags.get(tag.start, ())[:2] == (tag.name, tag.end):
            return True
        return any(start <= tag.start and tag.end <= end for start, end in scripting.raw)

    @staticmethod
    def _sorted_edits(changes: Mapping[int, tuple[StartTag, Mapping[str, str]]]) -> list[_Edit]:
        edits = [e for tag, values in changes.values() for e in _edits(tag, values)]
        return sorted(edits, key=lambda e: (e.start, e.end))  # stable: insertions in order

    def _verified(self, starts: list[int]) -> list[int]:
        """The tags of ``starts`` whose changes pass the check: all of them, but for a bug;
        else found by halving, a parse per step, up to ``MAX_CHECKS`` (the rest dropped)."""
        if not starts or self._passes(starts):
            return starts
        if len(starts) == 1:
            return []
        left = self._verified(starts[: len(starts) // 2])
        both = left + self._verified(starts[len(starts) // 2 :])
        return both if both == left or self._passes(both) else left

    def _passes(self, starts: list[int]) -> bool:
        if self._checks_left <= 0:
            return False
        self._checks_left -= 1
        changes = {at: self._changes[at] for at in starts}
        edits = self._sorted_edits(changes)
        edited = _apply(self._lines.text, edits)
        back = _back(edits)
        values = {at: values for at, (_, values) in changes.items()}
        if _records(_parse(edited, False), back) != _expected(self._records(False), values):
            return False
        if self._scripting_parse() is None:
            return True  # scripts on or off, the same tree
        got = _records(_parse(edited, True), back, mask_noscript=True)
        return got == _expected(self._records(True), values)

    def _records(self, scripting: bool) -> list[_Record]:
        if scripting not in self._cached:
            parse = self._scripting_parse() if scripting else self._parse
            assert parse is not None
            self._cached[scripting] = _records(parse, mask_noscript=scripting)
        return self._cached[scripting]
