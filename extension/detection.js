/* AltCap detection: which images need a machine description, and how to mark the ones we
 * describe so that the page can be restored exactly.
 *
 * A classic script (no import/export): it is injected before content-script.js, where ES
 * modules are not allowed, and node tests load it with vm. It only defines
 * globalThis.AltCapDetection; in a content script that global lives in the extension's
 * isolated world, so pages never see it. Wrapped in a function so that injecting it twice
 * (registered script + "describe now") does not redeclare anything.
 *
 * classifyAlt() is the twin of captioner/alttext.py classify_alt(); tests/vectors/alttext.json
 * holds both to the same verdicts. Keep the two in step.
 */
(function (root) {
  "use strict";

  // Python's str.isspace() / re \s set (not JavaScript's \s, which lacks U+001C-U+001F and
  // U+0085 and adds U+FEFF), so that both implementations collapse the same characters.
  const SPACES =
    /[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+/gu;
  // Python's re.IGNORECASE also matches U+0130 and U+0131 for "i" (and U+017F for "s", which
  // the /iu flags give JavaScript too), hence the explicit [iİı].
  const IMAGE_FILE = /\.(jpe?g|png|g[iİı]f|webp|svg|bmp|t[iİı]ff?|av[iİı]f|he[iİı]c|[iİı]co)$/iu;
  // After collapsing, a plain space is the only whitespace left, so Python's "/\S" is "/[^ ]".
  const URL_LIKE = /^(https?:|data:|\/\/|\/[^ ])/iu;
  const LETTER = /\p{L}/u; // str.isalpha()
  const LETTER_OR_NUMBER = /[\p{L}\p{N}]/u; // str.isalnum()
  // alttext.py's words: runs of characters whose unicodedata.category() starts with L, M, N.
  const WORD = /[\p{L}\p{M}\p{N}]+/gu;
  const ONE_WORD = /^[\p{L}\p{M}]+$/u; // letters only, with their marks
  // Symbols a screen reader reads as something ("+", "→", "€", "✓", emoji); not Sk ("^").
  const MEANINGFUL_SYMBOL = /[\p{Sm}\p{Sc}\p{So}]/u;
  const SCHEME = /^([A-Za-z][A-Za-z0-9+.-]*):/;
  const FILE_SCHEMES = new Set(["http", "https", "file", "ftp"]); // the rest name no file
  const ASCII_SPACES = /^[ \t\n\f\r]+|[ \t\n\f\r]+$/g; // stripped from a URL or a lang
  const NO_WORDS = new Set();

  let meaningless = new Set();
  let stopwordLists = new Map(); // primary language subtag -> Set of words

  /** Load the word lists (extension/meaningless-alt.json's "words", and its "stopwords":
   * {language: [word, ...]}). Until they are loaded only the structural rules apply, so a
   * missing list can only make AltCap keep author text. */
  function setMeaninglessWords(words, stopwords) {
    const lower = (list) => new Set((Array.isArray(list) ? list : []).map((w) => String(w).toLowerCase()));
    meaningless = lower(words);
    const table = stopwords && typeof stopwords === "object" ? stopwords : {};
    stopwordLists = new Map(Object.entries(table).map(([lang, list]) => [lang, lower(list)]));
  }

  /** alttext.py's stopwords(): the words of language `lang` that name nothing alone, by its
   * primary subtag; English where no language is known, none for a language with no list. */
  function stopwordsOf(lang) {
    const tag = String(lang ?? "").replace(ASCII_SPACES, "");
    return stopwordLists.get(tag ? tag.split(/[-_]/)[0].toLowerCase() : "en") || NO_WORDS;
  }

  /** alttext.py's file_name(): the name of the file `src` points at, less its extension
   * (1-5 ASCII letters or digits), percent-decoded where that is valid UTF-8; null where it
   * names none (no extension; data:, blob: and schemes other than http(s), file, ftp). */
  function fileName(src) {
    const url = String(src ?? "").replace(ASCII_SPACES, "");
    const scheme = SCHEME.exec(url);
    if (scheme && !FILE_SCHEMES.has(scheme[1].toLowerCase())) return null;
    const path = url.split("#", 1)[0].split("?", 1)[0];
    let segment = path.slice(Math.max(path.lastIndexOf("/"), path.lastIndexOf("\\")) + 1);
    if (segment.includes("%")) {
      try {
        segment = decodeURIComponent(segment);
      } catch {
        // a malformed escape, or bytes that are not UTF-8: the name as written
      }
    }
    const dot = segment.lastIndexOf(".");
    if (dot < 0 || !/^[A-Za-z0-9]{1,5}$/.test(segment.slice(dot + 1))) return null;
    return collapse(segment.slice(0, dot)) || null;
  }

  /** Whitespace runs made one space (Python's whitespace), and trimmed. */
  function collapse(text) {
    return text.replace(SPACES, " ").replace(/^ +| +$/g, "");
  }

  function stripPunctuation(text) {
    const chars = Array.from(text); // code points, as Python indexes a str
    let start = 0;
    let end = chars.length;
    while (start < end && !LETTER_OR_NUMBER.test(chars[start])) start++;
    while (end > start && !LETTER_OR_NUMBER.test(chars[end - 1])) end--;
    return chars.slice(start, end).join("");
  }

  /** What an alt attribute tells a screen-reader user: "missing" (null: no attribute),
   * "decorative" (empty), "meaningless" (a file name, URL, or a word from the list, alone or
   * followed by a number; or nothing but such words, numbers, punctuation and stopwords of
   * the alt's language) or "ok" (author text, never replaced). `src` (optional): the image's
   * src attribute: an alt equal to its file name says nothing unless it is one plain word,
   * and ASCII digits equal to it are right (a numbered callout). `lang` (optional): the
   * alt's language. alttext.py's classify_alt() says why. */
  function classifyAlt(alt, src, lang) {
    if (alt === null || alt === undefined) return "missing";
    const text = collapse(String(alt));
    if (!text) return "decorative";
    const name = fileName(src);
    if (name !== null && text === name && /^[0-9]+$/.test(text)) return "ok"; // an image of text
    if (URL_LIKE.test(text) || IMAGE_FILE.test(text)) return "meaningless";
    if (name !== null && text.toLowerCase() === name.toLowerCase() && !ONE_WORD.test(text)) {
      return "meaningless"; // the file's name, as a CMS fills it in: "build-info"
    }
    const core = stripPunctuation(text).toLowerCase();
    if (meaningless.has(core)) return "meaningless";
    const word = withoutNumber(core); // "Image 1", "photo_03", "DSC 0042"
    if (word !== null && meaningless.has(stripPunctuation(word))) return "meaningless";
    return anythingLeft(text, lang) ? "ok" : "meaningless";
  }

  /** alttext.py's _anything_left(): a symbol that reads as something, or a word with a
   * letter that is neither a meaningless word nor a stopword of `lang`. */
  function anythingLeft(text, lang) {
    if (MEANINGFUL_SYMBOL.test(text)) return true;
    const stop = stopwordsOf(lang);
    for (const [word] of text.matchAll(WORD)) {
      const lower = word.toLowerCase();
      if (LETTER.test(word) && !meaningless.has(lower) && !stop.has(lower)) return true;
    }
    return false;
  }

  /** `text` without the number it ends with (ASCII digits, and the separators before it),
   * or null if it ends with no digit: alttext.py's _without_number(). A loop, not a regular
   * expression: a backtracking pattern is quadratic on page-controlled text. */
  function withoutNumber(text) {
    let end = text.length;
    while (end > 0 && text[end - 1] >= "0" && text[end - 1] <= "9") end--;
    if (end === text.length) return null;
    while (end > 0 && " _-.#(".includes(text[end - 1])) end--;
    return text.slice(0, end);
  }

  /** True when a label (aria-label, title, labelled-by text) already describes the image. */
  function saysSomething(text) {
    return typeof text === "string" && classifyAlt(text) === "ok";
  }

  // --- elements ---------------------------------------------------------------------------

  function tagOf(el) {
    return String((el && (el.tagName || el.nodeName)) || "").toUpperCase();
  }

  function attr(el, name) {
    const value = el.getAttribute(name);
    return value === null || value === undefined ? null : String(value);
  }

  function isImageInput(el) {
    return tagOf(el) === "INPUT" && (attr(el, "type") || "").trim().toLowerCase() === "image";
  }

  /** An element the page declares an image with ARIA (role="img": its first role wins),
   * other than <img> and <input type=image>, which say so themselves. Its picture, if any,
   * is its CSS background; its name comes from aria-label (where AltCap writes), labelled-by
   * text or title; it has no alt. */
  function isAriaImage(el) {
    const tag = tagOf(el);
    if (tag === "IMG" || tag === "INPUT" || typeof el.getAttribute !== "function") return false;
    return firstRole(el) === "img";
  }

  /** <img>, or <input type=image>: the elements whose alt is their name. */
  function isImageElement(el) {
    return tagOf(el) === "IMG" || isImageInput(el);
  }

  function firstRole(el) {
    return (attr(el, "role") || "").trim().toLowerCase().split(/\s+/)[0];
  }

  function ariaHiddenHere(el) {
    return (attr(el, "aria-hidden") || "").trim().toLowerCase() === "true";
  }

  function isCandidate(el) {
    return isImageElement(el) || isAriaImage(el);
  }

  /** The URL the browser actually shows: currentSrc follows srcset and <picture>; for an
   * ARIA image, its (first) CSS background image. */
  function imageUrl(el) {
    if (tagOf(el) === "IMG") return String(el.currentSrc || el.src || "");
    if (isImageInput(el)) return String(el.src || "");
    if (isAriaImage(el)) return backgroundUrl(el);
    return "";
  }

  // A computed background-image lists its layers with absolute URLs: url("https://...").
  const CSS_URL = /url\(\s*(?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|([^)"'\s]+))\s*\)/i;

  /** The first url() layer of the element's computed background-image, or "". */
  function backgroundUrl(el) {
    const view = el.ownerDocument && el.ownerDocument.defaultView;
    if (!view || typeof view.getComputedStyle !== "function") return "";
    const m = CSS_URL.exec(String(view.getComputedStyle(el).backgroundImage || ""));
    if (!m) return "";
    return (m[1] ?? m[2] ?? m[3]).replace(/\\(.)/g, "$1");
  }

  /** The attribute that holds an element's description, where AltCap writes its own. */
  function textAttribute(el) {
    return isAriaImage(el) ? "aria-label" : "alt";
  }

  /** Like classifyAlt() for the element's own text attribute, with the element's src (an
   * <img> or <input type=image>) and language. An ARIA image's aria-label is a name, not an
   * alt: empty means no name ("missing"), never "decorative". */
  function classifyText(el) {
    const text = attr(el, textAttribute(el));
    const src = isImageElement(el) ? attr(el, "src") : null;
    const verdict = classifyAlt(text, src, languageOf(el));
    return isAriaImage(el) && verdict === "decorative" ? "missing" : verdict;
  }

  /** "http" | "data" | "blob" | "" (anything else: file:, about:, extension pages...). */
  function urlKind(url) {
    const m = /^([a-z][a-z0-9+.-]*):/i.exec(String(url || ""));
    if (!m) return "";
    const scheme = m[1].toLowerCase();
    if (scheme === "http" || scheme === "https") return "http";
    if (scheme === "data" || scheme === "blob") return scheme;
    return "";
  }

  /** The parent, or the host when `node` is at the top of a shadow tree: aria-hidden on a
   * web component hides what its shadow root renders too. */
  function composedParent(node) {
    if (node.parentElement) return node.parentElement;
    const parent = node.parentNode;
    return parent && parent.nodeType === 11 && parent.host ? parent.host : null;
  }

  function hiddenFromAssistiveTech(el) {
    for (let node = el; node; node = composedParent(node)) {
      if (typeof node.getAttribute !== "function") break;
      if (ariaHiddenHere(node)) return true;
    }
    return false;
  }

  function labelledByText(el) {
    const ids = (attr(el, "aria-labelledby") || "").split(/\s+/).filter(Boolean);
    // The ids name elements of the image's own tree: its shadow root, if it is in one.
    const doc = typeof el.getRootNode === "function" ? el.getRootNode() : el.ownerDocument;
    if (!ids.length || !doc || typeof doc.getElementById !== "function") return "";
    return ids
      .map((id) => doc.getElementById(id))
      .filter(Boolean)
      .map((node) => String(node.textContent || ""))
      .join(" ");
  }

  const MIN_SIDE = 16; // CSS px: smaller renders are icons, bullets, spacers
  // A thin banner (long side / short side above BANNER_RATIO, short side under
  // BANNER_SHORT_SIDE CSS px) is worth describing only by its text: a caption of a strip says
  // nothing ("a close up of a wall"), but many are text (an ad, a site's name, a heading
  // drawn as an image, a wide button), which the server reads (issue 22).
  const BANNER_RATIO = 2.5;
  const BANNER_SHORT_SIDE = 150; // CSS px

  function result(action, reason, url) {
    return { action, reason, url: url || "" };
  }

  /** Whether a render of w x h CSS px is a thin banner (see BANNER_RATIO). */
  function isBannerShape(w, h) {
    const short = Math.min(w, h);
    return short > 0 && Math.max(w, h) / short > BANNER_RATIO && short < BANNER_SHORT_SIDE;
  }

  /** What the element's own markup tells a screen-reader user, and why: the verdict of
   * captioner/crawl/pages.py's _alt_verdict() ("missing" | "meaningless" need a description;
   * "decorative" | "ok" do not), with the rule that decided it as `reason`. */
  function altVerdict(el) {
    const aria = isAriaImage(el);
    const verdict = classifyText(el);
    if (verdict === "decorative") return { verdict, reason: "decorative" };
    if (verdict === "ok") return { verdict, reason: aria ? "aria-label" : "author-alt" };
    const role = firstRole(el);
    if (role === "presentation" || role === "none") {
      return { verdict: "decorative", reason: "presentational" };
    }
    if (hiddenFromAssistiveTech(el)) return { verdict: "decorative", reason: "aria-hidden" };
    if (saysSomething(attr(el, "aria-label"))) return { verdict: "ok", reason: "aria-label" };
    if (saysSomething(labelledByText(el))) return { verdict: "ok", reason: "aria-labelledby" };
    if (saysSomething(attr(el, "title"))) return { verdict: "ok", reason: "title" };
    return { verdict, reason: verdict };
  }

  /** altVerdict(), except that a decorative image that is all a link or button holds is
   * "empty_link" (pages.py's _verdict()): tests/vectors/links.json holds both to it. */
  function nameVerdict(el) {
    const own = altVerdict(el);
    if (own.verdict !== "decorative" || hiddenFromAssistiveTech(el) || !isEmptyLink(el)) {
      return own;
    }
    return { verdict: "empty_link", reason: "empty_link" };
  }

  // --- images that are all a link or button holds --------------------------------------------
  // alt="" says "decorative", but an image that is the only content of a link or button is
  // that control's name: with alt="" the link has none, and a screen reader reads its
  // address or just "link" (WebAIM's "empty link", among the commonest failures it finds).
  // Such an image is "empty_link": described like a missing alt.

  /** The link or button the image is part of: itself for <input type=image>, else the
   * nearest ancestor <a href>, <button> or role="link"/"button" in its own tree. */
  function controlOf(el) {
    if (isImageInput(el)) return el;
    for (let node = el.parentElement; node; node = node.parentElement) {
      const tag = tagOf(node);
      if ((tag === "A" && node.hasAttribute("href")) || tag === "BUTTON") return node;
      const role = firstRole(node);
      if (role === "link" || role === "button") return node;
    }
    return null;
  }

  const SILENT = new Set(["SCRIPT", "STYLE", "TEMPLATE", "NOSCRIPT"]);

  /** True when `el` is the first decorative image (alt="", or role="presentation") of a
   * link or button that nothing else names (see findNamingImage). */
  function isEmptyLink(el) {
    if (!isImageElement(el)) return false;
    const control = controlOf(el);
    return Boolean(control) && namingImage(control, el) === el;
  }

  // What a link holds is worked out once for all its images: a scan assesses a whole tree
  // in one synchronous pass, so the answers are kept until that pass ends (the next
  // microtask). Without this, one link holding n images (a page wrapped in one <a>) costs n
  // walks over n images: 2,000 took 13.6 s in Chromium. Images also come one at a time, on
  // their load events: a walk for one image stops at the link's first decorative image when
  // that is another one, so those cost what lies before it, not the whole link.
  let namingImages = null; // control -> {first, done, image}

  /** The image that names `control` (see findNamingImage), or null; enough of it to say
   * whether that image is `el`. */
  function namingImage(control, el) {
    if (!namingImages) {
      namingImages = new Map();
      Promise.resolve().then(() => {
        namingImages = null;
      });
    }
    let known = namingImages.get(control);
    if (!known || (!known.done && known.first === el)) {
      known = findNamingImage(control, el);
      namingImages.set(control, known);
    }
    return known.done ? known.image : null; // not done: its first image is not `el`
  }

  /** The image whose alt would be the only name of a link or button: its first decorative
   * image, when nothing else names it: no aria-label, aria-labelledby text or title of its
   * own that says something, no text in it (outside aria-hidden) that does, no element in
   * it named by aria-label, and no other image whose alt says something or that AltCap
   * describes. pages.py's _Context.naming_image() is the same rule.
   * Returns {first, done, image}: `image` (null when something names the link) once `done`;
   * the walk stops early, not done, at a first decorative image that is not `el`. */
  function findNamingImage(control, el) {
    for (const name of [attr(control, "aria-label"), labelledByText(control), attr(control, "title")]) {
      if (saysSomething(name)) return { first: null, done: true, image: null };
    }
    if (isImageInput(control)) {
      const image = altVerdict(control).verdict === "decorative" ? control : null;
      return { first: image, done: true, image }; // its alt is its only name
    }
    const texts = [];
    let first = null;
    let stop = false; // named, or the answer for `el` is known
    let named = false;
    (function walk(node) {
      for (const child of node.childNodes || []) {
        if (stop) return;
        if (child.nodeType === 3) texts.push(String(child.data));
        if (child.nodeType !== 1 || SILENT.has(tagOf(child)) || ariaHiddenHere(child)) continue;
        if (isImageElement(child)) {
          if (altVerdict(child).verdict !== "decorative") {
            named = stop = true; // named, or to be
          } else if (!first) {
            first = child;
            stop = child !== el;
          }
        } else if (saysSomething(attr(child, "aria-label"))) {
          named = stop = true;
        }
        walk(child);
      }
    })(control);
    if (named) return { first, done: true, image: null };
    if (first && first !== el) return { first, done: false, image: null };
    return { first, done: true, image: saysSomething(texts.join(" ")) ? null : first };
  }

  /** Decide what to do with one element.
   * action "describe": needs a caption (reason: "missing" | "meaningless" | "empty_link";
   * url set); `textOnly: true` on a thin banner: write its description only when it is the
   * image's own text (alt_from "text" or "caption_and_text"), never a caption alone;
   * action "wait": not loaded yet, look again on its load event;
   * action "skip": leave it alone (reason says why).
   * `win` (optional) gives getComputedStyle for visibility:hidden. */
  function assess(el, win) {
    if (!el || typeof el.getAttribute !== "function" || !isCandidate(el)) {
      return result("skip", "not-an-image");
    }
    if (el.hasAttribute(MARK)) return result("skip", "already-described");
    const aria = isAriaImage(el);
    const { verdict, reason } = nameVerdict(el);
    if (verdict === "decorative" || verdict === "ok") return result("skip", reason);

    const shown = rendered(el, win, aria);
    if (shown.action !== "describe") return shown;
    if (isBannerShape(shown.width, shown.height)) {
      return { ...result("describe", verdict, shown.url), textOnly: true };
    }
    return result("describe", verdict, shown.url);
  }

  /** Whether an image whose author's alt says something is one to check against that alt
   * (issue 23, the opt-in check): action "check" with `url` and `alt` (the author's alt, as
   * written) for an <img> or <input type=image> whose alt says something, loaded, shown at
   * 16 x 16 CSS px or more and no thin banner (a caption of a strip says nothing); "wait"
   * while it loads; "skip" otherwise (reason says why). Its alt is never changed. */
  function assessCheck(el, win) {
    if (!el || typeof el.getAttribute !== "function" || !isImageElement(el)) {
      return result("skip", "not-an-image");
    }
    if (el.hasAttribute(MARK)) return result("skip", "already-described");
    if (nameVerdict(el).reason !== "author-alt") return result("skip", "no-author-alt");
    if (hiddenFromAssistiveTech(el)) return result("skip", "aria-hidden"); // read by no one
    const shown = rendered(el, win, false);
    if (shown.action !== "describe") return shown;
    if (isBannerShape(shown.width, shown.height)) return result("skip", "banner");
    return { ...result("check", "author-alt", shown.url), alt: attr(el, "alt") };
  }

  /** assess()'s rules on the image itself: loaded, an address AltCap may send, not a
   * tracking pixel, visible and no smaller than MIN_SIDE; {action: "describe", url, width,
   * height} (CSS px) when it passes, else a "wait" or "skip" result. */
  function rendered(el, win, aria) {
    const isImg = tagOf(el) === "IMG";
    if (isImg && !el.complete) return result("wait", "loading");
    const url = imageUrl(el);
    if (!url) return result("skip", "no-url");
    // A background is fetched by the server, never sent as bytes (no <img> to draw from).
    if (!urlKind(url) || (aria && urlKind(url) !== "http")) {
      return result("skip", "unsupported-url");
    }
    if (isImg) {
      const nw = Number(el.naturalWidth) || 0;
      const nh = Number(el.naturalHeight) || 0;
      if (nw === 0 && nh === 0) return result("skip", "broken");
      if (nw <= 1 && nh <= 1) return result("skip", "tracking-pixel");
    }
    if (win && typeof win.getComputedStyle === "function") {
      const visibility = win.getComputedStyle(el).visibility;
      if (visibility === "hidden" || visibility === "collapse") return result("skip", "hidden");
    }
    const box = el.getBoundingClientRect();
    const w = Number(box && box.width) || 0;
    const h = Number(box && box.height) || 0;
    // Also catches display:none (0 x 0); the content script looks again when it shows up.
    if (w < MIN_SIDE || h < MIN_SIDE) return result("skip", "too-small");
    return { ...result("describe", "", url), width: w, height: h };
  }

  function needsDescription(el, win) {
    return assess(el, win).action === "describe";
  }

  // --- marking ----------------------------------------------------------------------------
  // data-altcap holds the original alt so that the page can be restored exactly:
  // "__none__" when there was no alt attribute; an original alt that itself starts with
  // "__none__" or "\" is stored behind one extra "\" so it can never be mistaken for it.
  // Where the description went into aria-label (an ARIA image), data-altcap-attribute says
  // so: the page may take role="img" away later, and restoring must still find our text.
  // data-altcap-lang says that the element's lang is ours: a description in another
  // language than the page around it (or on a page that says none) is marked with the
  // captions' language, so that a screen reader reads it with the right voice.

  const MARK = "data-altcap";
  const MARK_ATTRIBUTE = "data-altcap-attribute";
  const MARK_LANG = "data-altcap-lang";
  const NONE = "__none__";

  function encodeOriginal(alt) {
    if (alt === null) return NONE;
    return alt.startsWith(NONE) || alt.startsWith("\\") ? "\\" + alt : alt;
  }

  function decodeOriginal(value) {
    if (value === NONE) return null;
    return value.startsWith("\\") ? value.slice(1) : value;
  }

  /** Write a machine description (alt, or an ARIA image's aria-label); remembers the
   * original the first time only. `language` (optional): the description's language tag;
   * an element without a lang of its own whose language is another (or none) gets it. */
  function applyCaption(el, text, language) {
    const name = el.hasAttribute(MARK) ? writtenAttribute(el) : textAttribute(el);
    if (!el.hasAttribute(MARK)) {
      el.setAttribute(MARK, encodeOriginal(attr(el, name)));
      if (name !== "alt") el.setAttribute(MARK_ATTRIBUTE, name);
    }
    el.setAttribute(name, text);
    dropLanguage(el);
    if (language && !el.hasAttribute("lang") && !sameLanguage(languageOf(el), language)) {
      el.setAttribute("lang", language);
      el.setAttribute(MARK_LANG, "");
    }
  }

  /** The language `el` is in: its nearest lang attribute (its own first), across shadow
   * boundaries; "" when there is none (lang="" says the same). */
  function languageOf(el) {
    for (let node = el; node; node = composedParent(node)) {
      if (typeof node.getAttribute !== "function") break;
      const lang = node.getAttribute("lang");
      if (lang !== null) return lang;
    }
    return "";
  }

  /** Whether text in language `text` reads right where the language is `where`: the same
   * primary subtag ("en-GB" text on an "en" page is fine; no language is not).
   * captioner/config.py's same_language() is the same rule. */
  function sameLanguage(where, text) {
    const primary = (tag) => String(tag || "").split("-")[0].trim().toLowerCase();
    return Boolean(primary(where)) && primary(where) === primary(text);
  }

  /** Take away the lang we added, if we did. */
  function dropLanguage(el) {
    if (!el.hasAttribute(MARK_LANG)) return;
    el.removeAttribute("lang");
    el.removeAttribute(MARK_LANG);
  }

  /** Where AltCap's description of a marked element is: alt, or aria-label. */
  function writtenAttribute(el) {
    return attr(el, MARK_ATTRIBUTE) === "aria-label" ? "aria-label" : "alt";
  }

  /** Put the original text back (or remove the attribute where there was none). False if
   * not ours. */
  function restoreOriginal(el) {
    const stored = attr(el, MARK);
    if (stored === null) return false;
    const name = writtenAttribute(el);
    const original = decodeOriginal(stored);
    if (original === null) el.removeAttribute(name);
    else el.setAttribute(name, original);
    dropMark(el);
    return true;
  }

  /** Forget our mark but keep the alt the page now has (the author changed it); the lang
   * we added for our text goes. */
  function dropMark(el) {
    el.removeAttribute(MARK);
    el.removeAttribute(MARK_ATTRIBUTE);
    dropLanguage(el);
  }

  /** The alt text written: prefix (marks machine text) + caption, one space between. */
  function captionText(prefix, caption) {
    const p = String(prefix || "");
    const c = String(caption || "").trim();
    if (!p.trim()) return c;
    return /\s$/.test(p) ? p + c : p + " " + c;
  }

  root.AltCapDetection = Object.freeze({
    MARK,
    NONE,
    setMeaninglessWords,
    classifyAlt,
    fileName,
    assess,
    assessCheck,
    needsDescription,
    imageUrl,
    urlKind,
    isCandidate,
    isAriaImage,
    textAttribute,
    classifyText,
    altVerdict,
    nameVerdict,
    isEmptyLink,
    applyCaption,
    languageOf,
    sameLanguage,
    restoreOriginal,
    dropMark,
    captionText,
    encodeOriginal,
    decodeOriginal,
  });
})(globalThis);
