/* AltCap caption text: what a server's caption may become in a page (alt or aria-label).
 *
 * The server is whatever address the user typed, not necessarily AltCap's own code, so the
 * content script applies this to every caption it is sent before writing or announcing it:
 * no bidi controls that make what is shown differ from what is read (U+202E shows "gpj.exe"
 * as "exe.jpg"), no invisible characters that hide or pad words, no control characters, and
 * at most MAX_ALT_CHARS characters, cut at a word boundary with "…". The same goes for the
 * server's `alt` (issue 22: an image's own text, or the caption with it), which is written
 * instead of the caption when it says something.
 *
 * altText() is the twin of captioner/alttext.py alt_text(); tests/vectors/caption-text.json
 * holds both to the same output. Lengths are in code points (Python's len(), [...s].length
 * here), never UTF-16 units, so a surrogate pair is never split. Keep the two in step.
 *
 * The one place where a server's words are capped: the service worker applies the same rule
 * as each answer arrives (network.js readResult() imports this file), so that an answer of
 * megabytes is neither cached nor handed to a page; the content script applies it again to
 * whatever it is handed.
 *
 * A classic script (no import/export), injected after detection.js and before
 * content-script.js; it only defines globalThis.AltCapCaptionText (in the extension's
 * isolated world, and in the worker's global scope). Wrapped in a function so that injecting
 * it twice redeclares nothing.
 */
(function (root) {
  "use strict";

  // alttext.py's MAX_ALT_CHARS default: the extension's own cap, whatever the server sends.
  const MAX_ALT_CHARS = 250;
  const ELLIPSIS = "\u2026";
  // Zero-width non-joiner and joiner: kept between two visible characters only (Persian and
  // Indic spelling, emoji ZWJ sequences such as "woman technologist").
  const JOINERS = new Set(["\u200c", "\u200d"]);
  const SPACE_CONTROLS = new Set(["\t", "\n", "\v", "\f", "\r", "\x85"]); // a space each
  const SPACE = /^[\p{Zs}\p{Zl}\p{Zp}]$/u; // no-break, ideographic, line separator...: a space
  const DROPPED = /^[\p{Cc}\p{Cf}\p{Cs}\ufffd]$/u; // controls, format characters, lone surrogates
  // Unicode's Default_Ignorable_Code_Point, the same ranges as alttext.py's _IGNORABLE
  // (variation selectors, Hangul fillers, tags, reserved): written out rather than
  // \p{Default_Ignorable_Code_Point} so that both sides drop the same set.
  const IGNORABLE = [
    [0x00ad, 0x00ad],
    [0x034f, 0x034f],
    [0x061c, 0x061c],
    [0x115f, 0x1160],
    [0x17b4, 0x17b5],
    [0x180b, 0x180f],
    [0x200b, 0x200f],
    [0x202a, 0x202e],
    [0x2060, 0x206f],
    [0x3164, 0x3164],
    [0xfe00, 0xfe0f],
    [0xfeff, 0xfeff],
    [0xffa0, 0xffa0],
    [0xfff0, 0xfff8],
    [0x1bca0, 0x1bca3],
    [0x1d173, 0x1d17a],
    [0xe0000, 0xe0fff],
  ];
  const MARK = /^\p{M}$/u; // combining marks: part of the character before them
  const TRAILING = /^[\p{Po}\p{Pd}]$/u; // ",", ".", ";", "-": not left before the ellipsis
  const isSkinTone = (n) => n >= 0x1f3fb && n <= 0x1f3ff;
  const isRegionalIndicator = (n) => n >= 0x1f1e6 && n <= 0x1f1ff; // two make one flag

  function dropped(c) {
    if (DROPPED.test(c)) return true;
    const n = c.codePointAt(0);
    return IGNORABLE.some(([lo, hi]) => lo <= n && n <= hi);
  }

  /** alttext.py's tidy_text(): `text` without control, format, surrogate and
   * default-ignorable code points or U+FFFD, joiners only between two visible characters,
   * every run of whitespace one space, none at either end. */
  function tidyText(text) {
    const chars = [];
    for (const c of String(text ?? "")) {
      if (JOINERS.has(c)) chars.push(c);
      else if (SPACE_CONTROLS.has(c) || SPACE.test(c)) chars.push(" ");
      else if (!dropped(c)) chars.push(c);
    }
    const edge = (c) => c === " " || JOINERS.has(c);
    const out = [];
    chars.forEach((c, i) => {
      if (c === " " && (!out.length || out[out.length - 1] === " ")) return;
      if (JOINERS.has(c)) {
        const after = i + 1 < chars.length ? chars[i + 1] : " ";
        if (!out.length || edge(out[out.length - 1]) || edge(after)) return;
      }
      out.push(c);
    });
    while (out.length && out[out.length - 1] === " ") out.pop();
    return out.join("");
  }

  /** Whether keeping chars[0..cut) splits one visible character: a letter from its marks,
   * an emoji from its skin tone or ZWJ sequence, a flag's two regional indicators. */
  function splitsACharacter(chars, cut) {
    const before = chars[cut - 1];
    const after = chars[cut];
    if (JOINERS.has(after) || JOINERS.has(before) || MARK.test(after)) return true;
    if (isSkinTone(after.codePointAt(0))) return true;
    if (isRegionalIndicator(before.codePointAt(0)) && isRegionalIndicator(after.codePointAt(0))) {
      let run = 0;
      while (run < cut && isRegionalIndicator(chars[cut - 1 - run].codePointAt(0))) run += 1;
      return run % 2 === 1;
    }
    return false;
  }

  /** alttext.py's bound_text(): `text` if it has at most maxChars code points, else cut at
   * the last space that keeps at least half the room (else between two whole characters),
   * trailing punctuation dropped, and "…" added; maxChars in all. */
  function boundText(text, maxChars = MAX_ALT_CHARS) {
    if (!(maxChars >= 2)) throw new RangeError("maxChars must be at least 2");
    const chars = [...text];
    if (chars.length <= maxChars) return text;
    const room = maxChars - 1; // code points before the ellipsis
    const half = Math.max(1, Math.floor(room / 2));
    let cut = null;
    for (let i = room; i >= half; i--) {
      if (chars[i] === " ") {
        cut = i;
        break;
      }
    }
    if (cut === null) {
      cut = room;
      while (cut > 1 && splitsACharacter(chars, cut)) cut -= 1;
      if (splitsACharacter(chars, cut)) cut = room; // one character longer than the room
    }
    const head = chars.slice(0, cut);
    while (head.length && head[head.length - 1] === " ") head.pop();
    const short = head.slice();
    while (short.length) {
      const last = short[short.length - 1];
      if (last !== " " && !JOINERS.has(last) && !TRAILING.test(last)) break;
      short.pop();
    }
    return (short.length ? short : head).join("") + ELLIPSIS;
  }

  /** alttext.py's alt_text(): what a caption may put into a page; "" when nothing readable
   * is left. */
  function altText(caption, maxChars = MAX_ALT_CHARS) {
    return boundText(tidyText(caption), maxChars);
  }

  // What a server says an alt was made of (captioner/describe.py ALT_FROM); anything else
  // is read as "caption".
  const ALT_FROM = Object.freeze(["caption", "text", "caption_and_text"]);

  /** One result of a "describe" answer, cleaned: `caption` and `alt` through altText(), and
   * `alt`, the words to write, the server's alt when one says something, else the caption
   * (a server from before alt existed sends none), with `alt_from` saying which. An alt and
   * a caption with nothing left become "", which the content script treats as no caption.
   * Anything without a caption or an alt (an error) comes back unchanged. */
  function cleanResult(r) {
    if (!r || typeof r !== "object" || (typeof r.caption !== "string" && typeof r.alt !== "string")) return r;
    const caption = typeof r.caption === "string" ? altText(r.caption) : "";
    const alt = typeof r.alt === "string" ? altText(r.alt) : "";
    if (!alt) return { ...r, caption, alt: caption, alt_from: "caption" };
    return { ...r, caption, alt, alt_from: ALT_FROM.includes(r.alt_from) ? r.alt_from : "caption" };
  }

  /** A "describe" answer from the service worker with every result through cleanResult();
   * any other message answer unchanged. */
  function cleanAnswer(answer) {
    if (!answer || typeof answer !== "object" || !Array.isArray(answer.results)) return answer;
    return { ...answer, results: answer.results.map(cleanResult) };
  }

  /** Whether an alt made of `altFrom` holds the image's own text ("text", or
   * "caption_and_text"): the only alt written for a thin banner (detection.js textOnly). */
  function holdsText(altFrom) {
    return altFrom === "text" || altFrom === "caption_and_text";
  }

  /** Whether a described image's alt is withheld (captioner/trust.py withholds()): the
   * server does not believe its caption (`confident === false`) and the alt rests on it
   * (alt_from "caption" or "caption_and_text"). Nothing is written for it, so a screen-reader
   * user hears nothing invented; an alt of the image's own text (alt_from "text") is kept.
   * A server without CLIP's text tower, or one that is not AltCap, sends no `confident`:
   * nothing is withheld then. */
  function withholds(described) {
    return Boolean(described) && described.confident === false && described.alt_from !== "text";
  }

  // The aria-description an author's alt gets when the server's alt check says "suspect"
  // (issue 23, opt-in): AltCap's own words, fixed, English; AltCap's caption after them,
  // unless the server does not believe its caption either.
  const MISMATCH_NOTE = "AltCap: the description may not match";

  /** What to add (as aria-description) beside an author's alt the server's check found
   * `suspect`: "AltCap: the description may not match; appears to be: <caption>"; without
   * the caption when it is not confident or says nothing. "" for any other verdict. */
  function mismatchNote(checked) {
    if (!checked || checked.verdict !== "suspect") return "";
    const caption = altText(checked.caption);
    if (!caption || checked.confident === false) return MISMATCH_NOTE + ".";
    return `${MISMATCH_NOTE}; appears to be: ${caption}`;
  }

  /** The mark before an alt, by what it says: `prefixes.textPrefix` ("Appears to say: ") for
   * an image's own text, `prefixes.prefix` ("Appears to be: ") for a caption, alone or with
   * the text after it (that alt names the text itself: "... Appears to say: ..."). */
  function prefixFor(prefixes, altFrom) {
    const p = prefixes || {};
    return altFrom === "text" && typeof p.textPrefix === "string" ? p.textPrefix : p.prefix;
  }

  root.AltCapCaptionText = Object.freeze({
    MAX_ALT_CHARS,
    ELLIPSIS,
    ALT_FROM,
    tidyText,
    boundText,
    altText,
    cleanResult,
    cleanAnswer,
    holdsText,
    withholds,
    MISMATCH_NOTE,
    mismatchNote,
    prefixFor,
  });
})(globalThis);
